//! Watching the servers: the probe schedule (`PING` + `INFO` every `check_period` on a connection of its own),
//! the knocks (a fresh connection that only has to be accepted) on a server whose probe is late, and what replies
//! and connections show: one [`ServerView`] per server with its [`Health`] and its last `INFO` facts. `REPLICAOF`
//! and `SCRIPT KILL` go out on the probe connection too. [`Evidence`] weighs what a silent server showed (gone,
//! busy or unreachable); [`crate::failure::Failures`] keeps what keeps a server from being used.
//!
//! The monitor keeps no connection ids: it names a server's probe and knock connections by [`Line`] and records
//! [`Orders`] (open, send, close), which the engine hands to the pool.

use crate::address::ServerAddress;
use crate::auth;
use crate::config::Config;
use crate::contract::{Outbox, TimerReason};
use crate::event::Event;
use crate::failure::{ConnectFailure, DownCause, Evidence};
use crate::pool::{Line, Orders, Probe, Waiter};
use crate::resp::Request;
use crate::server_id::{ServerId, ServerTable};
use crate::topology::{Health, ReplicationInfo, ServerView, Views};
use bytes::Bytes;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

const PING_AND_INFO: &[u8] = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n";
const INFO: &[u8] = b"*1\r\n$4\r\nINFO\r\n";
const INFO_REPLICATION: &[u8] = b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n";

/// What a `REPLICAOF` the proxy sends makes of a server.
pub(crate) enum ReplicaOf {
    /// `REPLICAOF NO ONE`: a promotion.
    NoOne,
    /// `REPLICAOF host port` of `master`, preceded by `masterauth` (the `CONFIG SET` that gives the server the
    /// master's credentials) if there is one.
    Master { master: ServerId, masterauth: Option<Bytes> },
}

/// What a probe reply changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    /// Nothing the others need to know.
    Nothing,
    /// A server that was not routable answers again: held requests may go, and the failover rules may change
    /// their mind.
    Recovered,
    /// Fresh `INFO` facts: the failover rules must look at them.
    Facts,
    /// A fresh replication offset (for `WAIT`).
    Offset,
}

/// What the monitor keeps per server beyond its view: its connections and the evidence they gathered.
#[derive(Clone, Debug, Default)]
struct Watch {
    /// Whether its probe connection is open: ordered opened, and not reported lost since.
    probe_open: bool,
    /// When the probe connection was last reopened at once after a loss (at most once per `check_period`, so a
    /// server that closes every connection is not hammered).
    reopened_at: Option<Instant>,
    /// When the liveness check under way (its [`Line::Knock`]) started.
    knock_started: Option<Instant>,
    /// What it showed since its last valid reply (cleared by one; when it goes down, but for what was reported).
    evidence: Evidence,
    /// An `INFO replication` for `WAIT` is outstanding.
    offset_pending: bool,
}

/// The probe schedule and what it has learnt.
pub(crate) struct Monitor {
    views: Views,
    watches: ServerTable<Watch>,
    next_probe: Instant,
    check_period: Duration,
    down_after: Duration,
    busy_down_after: Duration,
    /// Offset requests sent so far: the serial of the next one.
    offset_serial: u64,
    /// What the pool is to do, until the engine hands it over.
    orders: Orders,
    /// A worker's monitor: the deciding engine probes and judges the servers, and its views are taken in
    /// ([`Monitor::adopt`]); this one only asks for replication offsets (for `WAIT` and read fences), on a line
    /// opened when first needed.
    passive: bool,
}

impl Monitor {
    /// Watching `config.servers` from `now`; the first probes go out at the first tick.
    pub(crate) fn new(config: &Config, now: Instant) -> Monitor {
        // In cluster mode the seeds are the first servers; the rest are learnt from their map.
        let first: Vec<&ServerAddress> =
            config.servers.iter().chain(config.cluster.iter().flat_map(|c| &c.seeds)).collect();
        Monitor {
            views: first.iter().map(|a| ServerView::new((*a).clone(), now)).collect(),
            watches: first.iter().map(|_| Watch::default()).collect(),
            next_probe: now,
            check_period: config.check_period,
            down_after: config.down_after,
            busy_down_after: config.busy_down_after,
            offset_serial: 1,
            orders: Orders::default(),
            passive: false,
        }
    }

    /// Makes this a worker's monitor, which neither probes nor judges (see [`Monitor::adopt`]).
    pub(crate) fn make_passive(&mut self) {
        self.passive = true;
    }

    /// A worker's monitor takes the deciding engine's `views` as its own (a probe late there keeps reads off the
    /// server here too), keeping what it read itself of the replication offsets. Returns the servers it did not watch before, and those it no longer watches.
    pub(crate) fn adopt(&mut self, views: &Views) -> (Vec<ServerId>, Vec<ServerId>) {
        let added: Vec<ServerId> = views.ids().into_iter().filter(|id| !self.views.contains(*id)).collect();
        let gone: Vec<ServerId> = self.views.ids().into_iter().filter(|id| !views.contains(*id)).collect();
        for server in &gone {
            self.remove_server(*server);
        }
        for (server, decided) in views.iter() {
            let mut view = decided.clone();
            match self.views.get(server) {
                Some(local) => {
                    view.offset_seen.clone_from(&local.offset_seen);
                    view.offset_serial = local.offset_serial;
                }
                None => {
                    view.offset_seen = None;
                    view.offset_serial = 0;
                    self.watches.insert(server, Watch::default());
                }
            }
            self.views.insert(server, view);
        }
        (added, gone)
    }

    /// What the monitor ordered since the pool last carried it out.
    pub(crate) fn orders(&mut self) -> &mut Orders {
        &mut self.orders
    }

    /// The id the next server added gets (the other machines store their state under it first).
    pub(crate) fn vacant_id(&self) -> ServerId {
        self.views.vacant_id()
    }

    /// Starts watching a new server under `id` (from [`Monitor::vacant_id`]; `PROXY ADD`, reload): probed at once.
    pub(crate) fn add_server(&mut self, now: Instant, id: ServerId, address: ServerAddress) {
        self.views.insert(id, ServerView::new(address, now));
        self.watches.insert(id, Watch::default());
        if !self.passive {
            self.open_probe(now, id);
        }
    }

    /// Sentinel mode: whether the sentinels keep reads off `server` (they do not list it as a healthy replica).
    pub(crate) fn set_reads_vetoed(&mut self, server: ServerId, vetoed: bool) {
        if let Some(view) = self.views.get_mut(server) {
            view.reads_vetoed = vetoed;
        }
    }

    /// Marks `server` as being removed: it takes no part in routing or failover from now on.
    pub(crate) fn drain(&mut self, server: ServerId) {
        if let Some(view) = self.views.get_mut(server) {
            view.draining = true;
        }
    }

    /// The servers being removed.
    pub(crate) fn draining(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.views.iter().filter(|(_, v)| v.draining).map(|(id, _)| id)
    }

    /// Forgets `server` (its connections are closed); no other server's id changes.
    pub(crate) fn remove_server(&mut self, server: ServerId) {
        self.views.remove(server);
        self.watches.remove(server);
    }

    /// The server at `address`, if it is watched.
    pub(crate) fn find(&self, address: &ServerAddress) -> Option<ServerId> {
        self.views.iter().find(|(_, v)| v.address == *address).map(|(id, _)| id)
    }

    /// What is known of every server, by id.
    pub(crate) fn views(&self) -> &Views {
        &self.views
    }

    /// Where `server` is (None once it is gone).
    pub(crate) fn address(&self, server: ServerId) -> Option<&ServerAddress> {
        self.views.get(server).map(|v| &v.address)
    }

    /// The instant `server` counts as down (or is sent `SCRIPT KILL`, or its knock times out) unless it answers
    /// first; None once it is down.
    fn down_deadline(&self, server: ServerId) -> Option<Instant> {
        let (view, watch) = (self.views.get(server)?, self.watches.get(server)?);
        if view.is_down() {
            return None;
        }
        let since = view.last_ok.unwrap_or(view.watched_since);
        let deadline = watch.evidence.down_at(since, self.down_after, self.busy_down_after);
        let Some(started) = watch.knock_started else { return Some(deadline) };
        let knock_timeout = started + self.check_period;
        // A silent server whose only open question is the knock waits for its answer; otherwise the earlier wins.
        let awaiting_knock = watch.evidence.down_cause().is_none();
        Some(if awaiting_knock { knock_timeout } else { deadline.min(knock_timeout) })
    }

    /// The next instant the monitor must act: a probe round, or a server's deadline (never, for a worker's).
    pub(crate) fn deadline(&self) -> Option<(Instant, TimerReason)> {
        if self.passive {
            return None;
        }
        let mut best = (self.next_probe, TimerReason::Probe);
        for (server, _) in self.views.iter() {
            if let Some(at) = self.down_deadline(server).filter(|at| *at < best.0) {
                best = (at, TimerReason::DownCheck(server.slot()));
            }
        }
        Some(best)
    }

    /// Probes every server when a round is due. A server whose probe is late gets a knock: is it still accepting
    /// connections?
    pub(crate) fn tick(&mut self, now: Instant) {
        if self.passive || now < self.next_probe {
            return;
        }
        self.next_probe = now + self.check_period;
        for server in self.views.ids() {
            let (Some(view), Some(watch)) = (self.views.get(server), self.watches.get(server)) else { continue };
            let is_down = view.is_down();
            match (watch.probe_open, view.probe_pending_since) {
                (false, _) => self.open_probe(now, server),
                (true, None) => self.send_probe(now, server),
                (true, Some(sent)) if is_down => {
                    // A down server's probe connect may hang (host gone): try a fresh one (which closes the old
                    // one) now and then.
                    if now.saturating_duration_since(sent) >= self.down_after {
                        self.open_probe(now, server);
                    }
                }
                (true, Some(_)) => self.knock(now, server),
            }
        }
    }

    fn open_probe(&mut self, now: Instant, server: ServerId) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        watch.probe_open = true;
        watch.offset_pending = false;
        self.orders.open(Line::Probe(server));
        self.send_probe(now, server);
    }

    fn knock(&mut self, now: Instant, server: ServerId) {
        let Some(watch) = self.watches.get_mut(server).filter(|w| w.knock_started.is_none()) else { return };
        watch.knock_started = Some(now);
        self.orders.open(Line::Knock(server));
    }

    /// Sends `PING` and `INFO` to `server` now.
    pub(crate) fn send_probe(&mut self, now: Instant, server: ServerId) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get(server)) else { return };
        if !watch.probe_open {
            return;
        }
        let waiters = [Waiter::Probe(Probe::Ping), Waiter::Probe(Probe::Info)];
        self.orders.send(Line::Probe(server), &waiters, Bytes::from_static(PING_AND_INFO));
        view.probe_pending_since = Some(now);
    }

    /// Probes at once every server without a probe outstanding (the next choice of master needs fresh `INFO`).
    pub(crate) fn probe_idle_servers(&mut self, now: Instant) {
        for server in self.views.ids() {
            if self.views.get(server).is_some_and(|v| v.probe_pending_since.is_none()) {
                self.send_probe(now, server);
            }
        }
    }

    /// The serial the next offset request will carry. Serials grow in the order the engine processes its inputs,
    /// so an offset read with a serial at least this one was asked for after everything processed so far.
    pub(crate) fn next_offset_serial(&self) -> u64 {
        self.offset_serial
    }

    /// Asks `server` for its replication offset now (for `WAIT` and read fences), unless such a question is
    /// outstanding.
    pub(crate) fn request_offset(&mut self, now: Instant, server: ServerId) {
        let passive = self.passive;
        let Some(watch) = self.watches.get_mut(server).filter(|w| (passive || w.probe_open) && !w.offset_pending)
        else {
            return;
        };
        if !watch.probe_open {
            // A worker's line for offsets, opened when first needed.
            watch.probe_open = true;
            self.orders.open(Line::Probe(server));
        }
        watch.offset_pending = true;
        let probe = Probe::Offset { sent_at: now, serial: self.offset_serial };
        self.offset_serial += 1;
        self.orders.send(Line::Probe(server), &[Waiter::Probe(probe)], Bytes::from_static(INFO_REPLICATION));
    }

    /// Sends `REPLICAOF` (then `INFO`, so the answer is confirmed at once) to `server` on its probe connection,
    /// preceded by `masterauth` (the `CONFIG SET` that gives it the master's credentials) if there is one;
    /// `reason` is for the log.
    pub(crate) fn send_replicaof(
        &mut self,
        now: Instant,
        server: ServerId,
        order: ReplicaOf,
        reason: String,
        out: &mut Outbox,
    ) {
        if !self.watches.get(server).is_some_and(|w| w.probe_open) {
            return;
        }
        let line = Line::Probe(server);
        let (target, masterauth) = match order {
            ReplicaOf::NoOne => (None, None),
            ReplicaOf::Master { master, masterauth } => {
                // A master that is gone meanwhile: nothing to point at.
                let Some(view) = self.views.get(master) else { return };
                (Some(view.address.clone()), masterauth)
            }
        };
        if let Some(request) = masterauth {
            self.orders.send(line, &[Waiter::Probe(Probe::MasterAuth)], request);
        }
        let request = match &target {
            Some(address) => {
                Request::from_args(&["REPLICAOF", address.host.as_str(), address.port.to_string().as_str()])
            }
            None => Request::from_args(&["REPLICAOF", "NO", "ONE"]),
        };
        self.orders.send(line, &[Waiter::Probe(Probe::ReplicaOf)], request.frame().clone());
        self.orders.send(line, &[Waiter::Probe(Probe::Info)], Bytes::from_static(INFO));
        let Some(view) = self.views.get_mut(server) else { return };
        view.probe_pending_since.get_or_insert(now);
        out.event(Event::ReplicaOfSent { address: view.address.clone(), master: target, reason });
    }

    /// A probe reply from `server`.
    pub(crate) fn probe_reply(
        &mut self,
        now: Instant,
        server: ServerId,
        probe: Probe,
        frame: &[u8],
        out: &mut Outbox,
    ) -> ProbeOutcome {
        match probe {
            Probe::Ping => self.ping_reply(now, server, frame, out),
            Probe::Info => {
                let Some(view) = self.views.get_mut(server) else { return ProbeOutcome::Nothing };
                view.probe_pending_since = None;
                let Some(info) = ReplicationInfo::from_reply(frame) else { return ProbeOutcome::Nothing };
                // An INFO answered is as good a sign of life as a PONG (a PING may not have been sent for a while:
                // a promotion's REPLICAOF keeps the probe busy).
                self.answered(now, server, out);
                let Some(view) = self.views.get_mut(server) else { return ProbeOutcome::Nothing };
                if let Some(role) = view.learn(info, now) {
                    let master = view.info.as_ref().and_then(|i| i.master.as_ref()).map(|(h, p)| format!("{h}:{p}"));
                    out.event(Event::RoleSeen { address: view.address.clone(), role, master });
                }
                ProbeOutcome::Facts
            }
            Probe::Offset { sent_at, serial } => {
                let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
                    return ProbeOutcome::Nothing;
                };
                watch.offset_pending = false;
                let Some(info) = ReplicationInfo::from_reply(frame) else { return ProbeOutcome::Nothing };
                view.offset_seen = Some((sent_at, info));
                view.offset_serial = serial;
                if self.passive {
                    // The deciding engine judges whether it is up.
                    return ProbeOutcome::Offset;
                }
                if self.answered(now, server, out) {
                    ProbeOutcome::Recovered
                } else {
                    ProbeOutcome::Offset
                }
            }
            Probe::ReplicaOf | Probe::Kill | Probe::MasterAuth => {
                let Some(address) = self.address(server).cloned() else { return ProbeOutcome::Nothing };
                let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
                out.event(Event::CommandAnswered { address, command: probe.command(), reply });
                ProbeOutcome::Nothing
            }
        }
    }

    fn ping_reply(&mut self, now: Instant, server: ServerId, frame: &[u8], out: &mut Outbox) -> ProbeOutcome {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
            return ProbeOutcome::Nothing;
        };
        if let Some(evidence) = watch.evidence.busy_reply(frame, now) {
            if view.seems_busy(evidence) {
                out.event(Event::ServerBusy { address: view.address.clone(), evidence });
            }
            return ProbeOutcome::Nothing;
        }
        if auth::is_auth_error(frame) {
            // It answers, so it is alive and not down; it is just not usable with these credentials.
            self.answered(now, server, out);
            self.credentials_refused(server, frame, out);
            return ProbeOutcome::Nothing;
        }
        if !(frame.starts_with(b"+PONG") || frame.starts_with(b"-MASTERDOWN")) {
            return ProbeOutcome::Nothing;
        }
        // The probe connection is logged in (or needs no login).
        self.credentials_accepted(server, out);
        if self.answered(now, server, out) {
            ProbeOutcome::Recovered
        } else {
            ProbeOutcome::Nothing
        }
    }

    /// The reply to the `AUTH` a connection to `server` started with: `-WRONGPASS` means the credentials are
    /// wrong. (A server without any password answers a bare `AUTH` with `-ERR ... without any password
    /// configured`, and the connection works: that is no refusal.) Returns whether that made the server usable
    /// again.
    pub(crate) fn auth_reply(&mut self, server: ServerId, frame: &[u8], out: &mut Outbox) -> bool {
        if auth::is_auth_error(frame) {
            self.credentials_refused(server, frame, out);
            false
        } else {
            self.credentials_accepted(server, out)
        }
    }

    /// `server` refused the proxy's credentials (or has none from it and wants some): not usable, not down. Said
    /// loudly once, not at every probe.
    fn credentials_refused(&mut self, server: ServerId, frame: &[u8], out: &mut Outbox) {
        let Some(view) = self.views.get_mut(server) else { return };
        view.info = None;
        if view.failures.refuse_credentials(frame) {
            let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
            out.event(Event::ServerAuthRefused { address: view.address.clone(), reply });
        }
    }

    /// `server` accepted the proxy's credentials: usable again if it was not. Returns whether it was not.
    fn credentials_accepted(&mut self, server: ServerId, out: &mut Outbox) -> bool {
        let Some(view) = self.views.get_mut(server) else { return false };
        let was_refused = view.failures.accept_credentials();
        if was_refused {
            out.event(Event::ServerAuthAccepted { address: view.address.clone() });
        }
        was_refused
    }

    /// `server` gave a valid answer: it is up. Returns whether it was not routable before.
    fn answered(&mut self, now: Instant, server: ServerId, out: &mut Outbox) -> bool {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
            return false;
        };
        view.last_ok = Some(now);
        *watch = Watch {
            probe_open: watch.probe_open,
            knock_started: watch.knock_started,
            offset_pending: watch.offset_pending,
            ..Watch::default()
        };
        let was = std::mem::replace(&mut view.health, Health::Up);
        view.why = "it answers probes";
        view.failures.answered();
        if was != Health::Up {
            out.event(Event::ServerUp { address: view.address.clone(), was: was.describe() });
        }
        was > Health::Busy
    }

    /// The knock on `server` was accepted: the process is alive, and the knock is closed.
    pub(crate) fn knock_accepted(&mut self, now: Instant, server: ServerId, out: &mut Outbox) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else { return };
        if watch.knock_started.take().is_none() {
            return;
        }
        self.orders.close(Line::Knock(server));
        watch.evidence.alive(now);
        let evidence = "its probe is late but it accepts connections";
        if view.probe_pending_since.is_some() && view.seems_busy(evidence) {
            out.event(Event::ServerBusy { address: view.address.clone(), evidence });
        }
    }

    /// A connect to `server` failed for `reason` (of the kind `failure`): kept as its obstacle, and reported
    /// unless it is the reason already reported since the server last answered.
    pub(crate) fn connect_error(&mut self, server: ServerId, reason: &str, failure: ConnectFailure, out: &mut Outbox) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else { return };
        view.failures.connect_failed(failure);
        if watch.evidence.connect_error(reason, failure) {
            out.event(Event::ConnectFailed { address: view.address.clone(), reason: reason.to_string() });
        }
    }

    /// A new connection to `server` (a knock, a probe, a data connection) failed without being refused, or a knock
    /// timed out: the host or the network may be gone, so whatever proved it alive no longer does.
    pub(crate) fn connect_failed(&mut self, server: ServerId) {
        if let Some(watch) = self.watches.get_mut(server) {
            watch.evidence.no_proof_of_life();
        }
    }

    /// The knock on `server` is gone: forgotten, without taking that as evidence (a refusal is weighed by
    /// [`Monitor::refused`], a failed connect by [`Monitor::connect_failed`]; a knock the engine closed itself
    /// says nothing).
    pub(crate) fn forget_knock(&mut self, server: ServerId) {
        if let Some(watch) = self.watches.get_mut(server) {
            watch.knock_started = None;
        }
    }

    /// A connect to `server` was refused: its process is gone. Returns whether that made it down.
    pub(crate) fn refused(&mut self, server: ServerId, out: &mut Outbox) -> bool {
        if let Some(view) = self.views.get_mut(server) {
            view.failures.refused();
        }
        self.mark_down(server, DownCause::Refused, out)
    }

    /// The probe connection of `server` failed or broke: reopened at once (at most once per `check_period`) to
    /// tell a gone process (refused) from a closed connection.
    pub(crate) fn probe_lost(&mut self, now: Instant, server: ServerId) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else { return };
        watch.probe_open = false;
        watch.offset_pending = false;
        view.probe_pending_since = None;
        if self.passive {
            // Only a worker's line for offsets: opened again when next needed.
            return;
        }
        view.incarnation += 1;
        view.worsen(Health::Unreachable, "its probe connection failed or broke");
        let recently = watch.reopened_at.is_some_and(|at| now.saturating_duration_since(at) < self.check_period);
        if !view.is_down() && !recently && !view.draining {
            watch.reopened_at = Some(now);
            self.open_probe(now, server);
        }
    }

    /// A data connection to `server` was refused, or lost with requests on it: it may be dead. Route nothing more
    /// to it until a probe hears from it (asked at once, if its probe connection still works).
    pub(crate) fn data_conn_lost(&mut self, now: Instant, server: ServerId) {
        let Some(view) = self.views.get_mut(server) else { return };
        view.incarnation += 1;
        view.worsen(Health::Suspect, "a data connection to it was refused or lost");
        if !self.passive && view.probe_pending_since.is_none() {
            self.send_probe(now, server);
        }
    }

    /// Acts on every deadline that has passed: a knock that timed out, a busy server sent `SCRIPT KILL`, a
    /// server now down. Returns the servers that went down.
    pub(crate) fn detect_down(&mut self, now: Instant, out: &mut Outbox) -> SmallVec<[ServerId; 2]> {
        let mut newly_down = SmallVec::new();
        if self.passive {
            return newly_down;
        }
        for server in self.views.ids() {
            if self.watches.get(server).and_then(|w| w.knock_started).is_some_and(|at| now >= at + self.check_period) {
                // No proof of life.
                self.orders.close(Line::Knock(server));
                self.forget_knock(server);
                self.connect_failed(server);
            }
            if self.down_deadline(server).is_none_or(|at| now < at) {
                continue;
            }
            let (Some(view), Some(watch)) = (self.views.get(server), self.watches.get_mut(server)) else { continue };
            if let Some(kill) = watch.evidence.kill_due().filter(|_| watch.probe_open) {
                watch.evidence.kill_sent(now);
                self.orders.send(Line::Probe(server), &[Waiter::Probe(Probe::Kill)], kill_request(kill));
                out.event(Event::KillSent { address: view.address.clone(), command: kill });
                continue;
            }
            let Some(cause) = watch.evidence.down_cause() else {
                // Silent, and nothing says whether it is alive: one knock decides, within check_period.
                self.knock(now, server);
                continue;
            };
            if self.mark_down(server, cause, out) {
                newly_down.push(server);
            }
        }
        newly_down
    }

    fn mark_down(&mut self, server: ServerId, cause: DownCause, out: &mut Outbox) -> bool {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
            return false;
        };
        if view.is_down() {
            return false;
        }
        let reason = view.failures.went_down(cause);
        view.health = Health::Down;
        view.why = reason;
        view.info = None;
        view.incarnation += 1;
        // Its knock is closed with its other connections.
        *watch = Watch { probe_open: watch.probe_open, evidence: watch.evidence.after_down(), ..Watch::default() };
        out.event(Event::ServerDown { address: view.address.clone(), reason });
        true
    }
}

fn kill_request(kill: &str) -> Bytes {
    let (command, sub) = kill.split_once(' ').unwrap_or((kill, ""));
    Request::from_args(&[command, sub]).frame().clone()
}
