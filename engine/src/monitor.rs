//! Watching the servers: the probe schedule (`PING` + `INFO` every `check_period` on a connection of its own),
//! the evidence probes and connections gather, and what it makes of it: one [`ServerView`] per server with its
//! [`Health`] and its last `INFO` facts. `REPLICAOF` and `SCRIPT KILL` go out on the probe connection too.
//!
//! Three kinds of evidence, three answers (Sentinel's experience is the guide):
//! - the process is gone: a connect is refused (a closed probe connection is reopened at once to find out).
//!   Down at once.
//! - alive but busy: it answers `-BUSY` or `-LOADING`, or its probe is late while a fresh connection to it (a
//!   "knock") is accepted (a long script, `DEBUG SLEEP`, `CLIENT PAUSE`, `SIGSTOP`). Down only after
//!   `busy_down_after`; a server still answering `-BUSY` then is sent `SCRIPT KILL` first and gets `down_after`
//!   more.
//! - unreachable: silent, and knocks time out (host or network gone). Down after `down_after`, once at least one
//!   knock has confirmed it.

use crate::address::ServerAddress;
use crate::auth;
use crate::config::Config;
use crate::conn::ConnId;
use crate::contract::{Outbox, TimerReason};
use crate::event::Event;
use crate::failure::{ConnectFailure, Obstacle};
use crate::pool::{Pool, Probe, Purpose, Waiter};
use crate::resp::Request;
use crate::server_id::{ServerId, ServerTable};
use crate::topology::{Health, ReplicationInfo, Role, ServerView, Views};
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
    probe: Option<ConnId>,
    /// When the probe connection was last reopened at once after a loss (at most once per `check_period`, so a
    /// server that closes every connection is not hammered).
    reopened_at: Option<Instant>,
    /// The liveness check under way, and when it started.
    knock: Option<(ConnId, Instant)>,
    /// Knocks that timed out since the last valid reply: the confirmation that a silent server is unreachable.
    knocks_timed_out: u32,
    /// The latest proof that the process is alive while it does not answer (a knock accepted, `-BUSY`,
    /// `-LOADING`); cleared by a valid reply or a knock that timed out.
    alive_at: Option<Instant>,
    /// The last probe reply was `-BUSY`: the command that ends what keeps it busy.
    kill: Option<&'static str>,
    /// When that command was sent (once per busy spell).
    kill_sent_at: Option<Instant>,
    /// An `INFO replication` for `WAIT` is outstanding.
    offset_pending: bool,
    /// Why the last connect failed, as reported (so that a reason that repeats every probe is logged once).
    connect_error: Option<String>,
    /// The kind of the last connect failure since the last valid reply: the evidence a server that goes down
    /// because of it is down for.
    last_failure: Option<ConnectFailure>,
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
}

impl Monitor {
    /// Watching `config.servers` from `now`; the first probes go out at the first tick.
    pub(crate) fn new(config: &Config, now: Instant) -> Monitor {
        Monitor {
            views: config.servers.iter().map(|a| ServerView::new(a.clone(), now)).collect(),
            watches: config.servers.iter().map(|_| Watch::default()).collect(),
            next_probe: now,
            check_period: config.check_period,
            down_after: config.down_after,
            busy_down_after: config.busy_down_after,
            offset_serial: 1,
        }
    }

    /// The id the next server added gets (the other machines store their state under it first).
    pub(crate) fn vacant_id(&self) -> ServerId {
        self.views.vacant_id()
    }

    /// Starts watching a new server under `id` (from [`Monitor::vacant_id`]; `PROXY ADD`, reload): probed at once.
    pub(crate) fn add_server(
        &mut self,
        now: Instant,
        id: ServerId,
        address: ServerAddress,
        pool: &mut Pool,
        out: &mut Outbox,
    ) {
        self.views.insert(id, ServerView::new(address, now));
        self.watches.insert(id, Watch::default());
        self.open_probe(now, id, pool, out);
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
        let base = view.last_ok.unwrap_or(view.watched_since);
        let deadline = if let Some(sent) = watch.kill_sent_at {
            sent + self.down_after
        } else if watch.alive_at.is_some() {
            base + self.busy_down_after
        } else {
            base + self.down_after
        };
        let Some((_, started)) = watch.knock else { return Some(deadline) };
        let knock_timeout = started + self.check_period;
        // A silent server whose only open question is the knock waits for its answer; otherwise the earlier wins.
        let awaiting_knock = watch.kill_sent_at.is_none() && watch.alive_at.is_none() && watch.knocks_timed_out == 0;
        Some(if awaiting_knock { knock_timeout } else { deadline.min(knock_timeout) })
    }

    /// The next instant the monitor must act: a probe round, or a server's deadline.
    pub(crate) fn deadline(&self) -> (Instant, TimerReason) {
        let mut best = (self.next_probe, TimerReason::Probe);
        for (server, _) in self.views.iter() {
            if let Some(at) = self.down_deadline(server).filter(|at| *at < best.0) {
                best = (at, TimerReason::DownCheck(server.slot()));
            }
        }
        best
    }

    /// Probes every server when a round is due. A server whose probe is late gets a knock: is it still accepting
    /// connections?
    pub(crate) fn tick(&mut self, now: Instant, pool: &mut Pool, out: &mut Outbox) {
        if now < self.next_probe {
            return;
        }
        self.next_probe = now + self.check_period;
        for server in self.views.ids() {
            let (Some(view), Some(watch)) = (self.views.get(server), self.watches.get(server)) else { continue };
            let is_down = view.is_down();
            match (watch.probe, view.probe_pending_since) {
                (None, _) => self.open_probe(now, server, pool, out),
                (Some(_), None) => self.send_probe(now, server, pool, out),
                (Some(conn), Some(sent)) if is_down => {
                    // A down server's probe connect may hang (host gone): try a fresh one now and then.
                    if now.saturating_duration_since(sent) >= self.down_after {
                        pool.close(conn, out);
                        self.open_probe(now, server, pool, out);
                    }
                }
                (Some(_), Some(_)) => self.knock(now, server, pool, out),
            }
        }
    }

    fn open_probe(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        watch.probe = pool.open(server, Purpose::Probe, out);
        watch.offset_pending = false;
        self.send_probe(now, server, pool, out);
    }

    fn knock(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        if watch.knock.is_none() {
            watch.knock = pool.open(server, Purpose::Knock, out).map(|conn| (conn, now));
        }
    }

    /// Sends `PING` and `INFO` to `server` now.
    pub(crate) fn send_probe(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get(server)) else { return };
        let Some(conn) = watch.probe else { return };
        let waiters = [Waiter::Probe(Probe::Ping), Waiter::Probe(Probe::Info)];
        pool.send(conn, &waiters, Bytes::from_static(PING_AND_INFO), out);
        view.probe_pending_since = Some(now);
    }

    /// Probes at once every server without a probe outstanding (the next choice of master needs fresh `INFO`).
    pub(crate) fn probe_idle_servers(&mut self, now: Instant, pool: &mut Pool, out: &mut Outbox) {
        for server in self.views.ids() {
            if self.views.get(server).is_some_and(|v| v.probe_pending_since.is_none()) {
                self.send_probe(now, server, pool, out);
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
    pub(crate) fn request_offset(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        let Some(conn) = watch.probe.filter(|_| !watch.offset_pending) else { return };
        watch.offset_pending = true;
        let probe = Probe::Offset { sent_at: now, serial: self.offset_serial };
        self.offset_serial += 1;
        pool.send(conn, &[Waiter::Probe(probe)], Bytes::from_static(INFO_REPLICATION), out);
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
        pool: &mut Pool,
        out: &mut Outbox,
    ) {
        let Some(conn) = self.watches.get(server).and_then(|w| w.probe) else { return };
        let master = match order {
            ReplicaOf::NoOne => None,
            ReplicaOf::Master { master, masterauth } => {
                if let Some(request) = masterauth {
                    pool.send(conn, &[Waiter::Probe(Probe::MasterAuth)], request, out);
                }
                Some(master)
            }
        };
        let target = match master {
            // A master that is gone meanwhile: nothing to point at.
            Some(m) => Some(self.views.get(m).map(|v| v.address.clone()).ok_or(())),
            None => None,
        };
        let Ok(target) = target.transpose() else { return };
        let request = match &target {
            Some(address) => Request::from_args(&[
                b"REPLICAOF".as_slice(),
                address.host.as_bytes(),
                address.port.to_string().as_bytes(),
            ]),
            None => Request::from_args(&[b"REPLICAOF".as_slice(), b"NO", b"ONE"]),
        };
        pool.send(conn, &[Waiter::Probe(Probe::ReplicaOf)], request.frame().clone(), out);
        pool.send(conn, &[Waiter::Probe(Probe::Info)], Bytes::from_static(INFO), out);
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
                let Some(text) = bulk_payload(frame) else { return ProbeOutcome::Nothing };
                // An INFO answered is as good a sign of life as a PONG (a PING may not have been sent for a while:
                // a promotion's REPLICAOF keeps the probe busy).
                self.answered(now, server, out);
                let Some(view) = self.views.get_mut(server) else { return ProbeOutcome::Nothing };
                let info = ReplicationInfo::parse(text);
                let last_run_id =
                    view.info.as_ref().and_then(|old| old.run_id.as_deref()).or(view.replica_run_id.as_deref());
                if last_run_id.is_some_and(|old| info.run_id.as_deref().is_some_and(|new| new != old)) {
                    view.incarnation += 1;
                }
                let changed = view.info.as_ref().is_none_or(|old| old.role != info.role || old.master != info.master);
                if let (true, Some(role)) = (changed, info.role) {
                    out.event(Event::RoleSeen {
                        address: view.address.clone(),
                        role,
                        master: info.master.as_ref().map(|(h, p)| format!("{h}:{p}")),
                    });
                }
                match info.role {
                    Some(Role::Replica) => {
                        view.replica_run_id.clone_from(&info.run_id);
                        view.promoted_in_place = false;
                    }
                    Some(Role::Master) => {
                        view.promoted_in_place = info.run_id.is_some() && view.replica_run_id == info.run_id;
                    }
                    None => view.promoted_in_place = false,
                }
                view.info = Some(info);
                view.info_at = Some(now);
                ProbeOutcome::Facts
            }
            Probe::Offset { sent_at, serial } => {
                let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
                    return ProbeOutcome::Nothing;
                };
                watch.offset_pending = false;
                let Some(text) = bulk_payload(frame) else { return ProbeOutcome::Nothing };
                view.offset_seen = Some((sent_at, ReplicationInfo::parse(text)));
                view.offset_serial = serial;
                if self.answered(now, server, out) {
                    ProbeOutcome::Recovered
                } else {
                    ProbeOutcome::Offset
                }
            }
            Probe::ReplicaOf | Probe::Kill | Probe::MasterAuth => {
                let Some(address) = self.address(server).cloned() else { return ProbeOutcome::Nothing };
                let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
                let command = match probe {
                    Probe::Kill => "SCRIPT KILL",
                    Probe::MasterAuth => "CONFIG SET masterauth",
                    _ => "REPLICAOF",
                };
                out.event(Event::CommandAnswered { address, command, reply });
                ProbeOutcome::Nothing
            }
        }
    }

    fn ping_reply(&mut self, now: Instant, server: ServerId, frame: &[u8], out: &mut Outbox) -> ProbeOutcome {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
            return ProbeOutcome::Nothing;
        };
        let busy = if frame.starts_with(b"-BUSY") {
            let function = memchr::memmem::find(frame, b"FUNCTION KILL").is_some();
            watch.kill = Some(if function { "FUNCTION KILL" } else { "SCRIPT KILL" });
            Some("it answers -BUSY")
        } else if frame.starts_with(b"-LOADING") {
            Some("it answers -LOADING")
        } else {
            None
        };
        if let Some(evidence) = busy {
            watch.alive_at = Some(now);
            if view.health == Health::Up {
                view.worsen(Health::Busy, evidence);
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
        // The first refusal says most (`-WRONGPASS` for the AUTH; the commands after it only get `-NOAUTH`).
        if !view.auth_refused || !matches!(view.obstacle, Some(Obstacle::Credentials(_))) {
            view.obstacle = Some(Obstacle::credentials(frame));
        }
        if !view.auth_refused {
            view.auth_refused = true;
            let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
            out.event(Event::ServerAuthRefused { address: view.address.clone(), reply });
        }
    }

    /// `server` accepted the proxy's credentials: usable again if it was not. Returns whether it was not.
    fn credentials_accepted(&mut self, server: ServerId, out: &mut Outbox) -> bool {
        let Some(view) = self.views.get_mut(server) else { return false };
        let was_refused = std::mem::replace(&mut view.auth_refused, false);
        if matches!(view.obstacle, Some(Obstacle::Credentials(_))) {
            view.obstacle = None;
        }
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
        *watch =
            Watch { probe: watch.probe, knock: watch.knock, offset_pending: watch.offset_pending, ..Watch::default() };
        let was = std::mem::replace(&mut view.health, Health::Up);
        view.why = "it answers probes";
        if !view.auth_refused {
            view.obstacle = None;
        }
        if was != Health::Up {
            out.event(Event::ServerUp { address: view.address.clone(), was: was.describe() });
        }
        was > Health::Busy
    }

    /// `conn` was accepted; if it is a knock, the process is alive, and the knock is closed.
    pub(crate) fn knock_accepted(&mut self, now: Instant, conn: ConnId, pool: &mut Pool, out: &mut Outbox) {
        let Some((server, watch)) = self.watches.iter_mut().find(|(_, w)| w.knock.is_some_and(|(k, _)| k == conn))
        else {
            return;
        };
        pool.close(conn, out);
        let Some(view) = self.views.get_mut(server) else { return };
        watch.knock = None;
        watch.alive_at = Some(now);
        if view.health == Health::Up && view.probe_pending_since.is_some() {
            let evidence = "its probe is late but it accepts connections";
            view.worsen(Health::Busy, evidence);
            out.event(Event::ServerBusy { address: view.address.clone(), evidence });
        }
    }

    /// The knock connection `conn` timed out: no proof of life.
    fn knock_timed_out(&mut self, server: ServerId) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        watch.knock = None;
        watch.alive_at = None;
        watch.knocks_timed_out += 1;
    }

    /// A connect to `server` failed for `reason` (of the kind `failure`): kept as its obstacle, and reported
    /// unless it is the reason already reported since the server last answered.
    pub(crate) fn connect_error(&mut self, server: ServerId, reason: &str, failure: ConnectFailure, out: &mut Outbox) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else { return };
        watch.last_failure = Some(failure);
        if !view.auth_refused {
            view.obstacle = Some(Obstacle::Connect(failure));
        }
        if watch.connect_error.as_deref() != Some(reason) {
            watch.connect_error = Some(reason.to_string());
            out.event(Event::ConnectFailed { address: view.address.clone(), reason: reason.to_string() });
        }
    }

    /// A new connection to `server` (a knock, a probe, a data connection) failed without being refused: the host
    /// or the network may be gone, so whatever proved it alive no longer does.
    pub(crate) fn connect_failed(&mut self, server: ServerId, conn: ConnId) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        if watch.knock.is_some_and(|(k, _)| k == conn) {
            watch.knock = None;
        }
        watch.alive_at = None;
        watch.knocks_timed_out += 1;
    }

    /// Forgets the knock `conn` if it was one, without taking it as evidence (a refusal is weighed by
    /// [`Monitor::refused`]; a knock the engine closed itself says nothing).
    pub(crate) fn forget_knock(&mut self, server: ServerId, conn: ConnId) {
        let Some(watch) = self.watches.get_mut(server) else { return };
        if watch.knock.is_some_and(|(k, _)| k == conn) {
            watch.knock = None;
        }
    }

    /// A connect to `server` was refused: its process is gone. Returns whether that made it down.
    pub(crate) fn refused(&mut self, server: ServerId, out: &mut Outbox) -> bool {
        if let Some(view) = self.views.get_mut(server) {
            view.obstacle = Some(Obstacle::Refused);
        }
        self.mark_down(server, "refused: a connection to it was refused (its process is gone)", Obstacle::Refused, out)
    }

    /// The probe connection of `server` failed or broke: reopened at once (at most once per `check_period`) to
    /// tell a gone process (refused) from a closed connection.
    pub(crate) fn probe_lost(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else { return };
        watch.probe = None;
        watch.offset_pending = false;
        view.probe_pending_since = None;
        view.incarnation += 1;
        view.worsen(Health::Unreachable, "its probe connection failed or broke");
        let recently = watch.reopened_at.is_some_and(|at| now.saturating_duration_since(at) < self.check_period);
        if !view.is_down() && !recently && !view.draining {
            watch.reopened_at = Some(now);
            self.open_probe(now, server, pool, out);
        }
    }

    /// A data connection to `server` was refused, or lost with requests on it: it may be dead. Route nothing more
    /// to it until a probe hears from it (asked at once, if its probe connection still works).
    pub(crate) fn data_conn_lost(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let Some(view) = self.views.get_mut(server) else { return };
        view.incarnation += 1;
        view.worsen(Health::Suspect, "a data connection to it was refused or lost");
        if view.probe_pending_since.is_none() {
            self.send_probe(now, server, pool, out);
        }
    }

    /// Acts on every deadline that has passed: a knock that timed out, a busy server sent `SCRIPT KILL`, a
    /// server now down. Returns the servers that went down.
    pub(crate) fn detect_down(&mut self, now: Instant, pool: &mut Pool, out: &mut Outbox) -> SmallVec<[ServerId; 2]> {
        let mut newly_down = SmallVec::new();
        for server in self.views.ids() {
            if let Some((conn, started)) = self.watches.get(server).and_then(|w| w.knock) {
                if now >= started + self.check_period {
                    pool.close(conn, out);
                    self.knock_timed_out(server);
                }
            }
            if self.down_deadline(server).is_none_or(|at| now < at) {
                continue;
            }
            let (Some(view), Some(watch)) = (self.views.get(server), self.watches.get_mut(server)) else { continue };
            if let (Some(kill), None, Some(probe)) = (watch.kill, watch.kill_sent_at, watch.probe) {
                watch.kill_sent_at = Some(now);
                pool.send(probe, &[Waiter::Probe(Probe::Kill)], kill_request(kill), out);
                out.event(Event::KillSent { address: view.address.clone(), command: kill });
                continue;
            }
            let (reason, obstacle) = if watch.kill_sent_at.is_some() {
                ("busy: still busy after busy_down_after and a kill", Obstacle::Busy)
            } else if watch.alive_at.is_some() {
                ("busy: alive but not answering for busy_down_after", Obstacle::Busy)
            } else if watch.knocks_timed_out == 0 {
                // Silent, and nothing says whether it is alive: one knock decides, within check_period.
                self.knock(now, server, pool, out);
                continue;
            } else {
                match watch.last_failure {
                    // New connections failed, for a reason the runtime saw (a TLS certificate refused ...).
                    Some(failure) => (failure.down_reason(), Obstacle::Connect(failure)),
                    None => {
                        ("timed out: no valid reply for down_after, and new connections time out", Obstacle::NoReply)
                    }
                }
            };
            if self.mark_down(server, reason, obstacle, out) {
                newly_down.push(server);
            }
        }
        newly_down
    }

    fn mark_down(&mut self, server: ServerId, reason: &'static str, obstacle: Obstacle, out: &mut Outbox) -> bool {
        let (Some(view), Some(watch)) = (self.views.get_mut(server), self.watches.get_mut(server)) else {
            return false;
        };
        if view.is_down() {
            return false;
        }
        if !view.auth_refused {
            view.obstacle = Some(obstacle);
        }
        view.health = Health::Down;
        view.why = reason;
        view.info = None;
        view.incarnation += 1;
        // The connect error already logged stays known, so that a down server failing the same way every probe
        // round is not logged again.
        *watch = Watch { probe: watch.probe, connect_error: watch.connect_error.take(), ..Watch::default() };
        out.event(Event::ServerDown { address: view.address.clone(), reason });
        true
    }
}

fn kill_request(kill: &str) -> Bytes {
    let (command, sub) = kill.split_once(' ').unwrap_or((kill, ""));
    Request::from_args(&[command, sub]).frame().clone()
}

/// The payload of a bulk string reply, if `frame` is one.
fn bulk_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.first() != Some(&b'$') && frame.first() != Some(&b'=') {
        return None;
    }
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    frame.get(header_end..frame.len().checked_sub(2)?)
}
