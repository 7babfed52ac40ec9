//! Watching the servers: the probe schedule (`PING` + `INFO` every `check_period` on a connection of its own),
//! the evidence probes and data connections gather, and what it makes of it: one [`ServerView`] per server with
//! its [`Health`] and its last `INFO` facts. `REPLICAOF` goes out on the probe connection too.

use crate::config::{Config, ServerAddress};
use crate::conn::ConnId;
use crate::contract::{Outbox, TimerReason};
use crate::event::Event;
use crate::pool::{Pool, Probe, Purpose, Waiter};
use crate::resp::Request;
use crate::topology::{Health, ReplicationInfo, ServerId, ServerView};
use bytes::Bytes;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

const PING_AND_INFO: &[u8] = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n";
const INFO: &[u8] = b"*1\r\n$4\r\nINFO\r\n";

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
}

/// The probe schedule and what it has learnt.
pub(crate) struct Monitor {
    views: Vec<ServerView>,
    /// Each server's probe connection.
    probes: Vec<Option<ConnId>>,
    next_probe: Instant,
    check_period: Duration,
    down_after: Duration,
}

impl Monitor {
    /// Watching `config.servers` from `now`; the first probes go out at the first tick.
    pub(crate) fn new(config: &Config, now: Instant) -> Monitor {
        Monitor {
            views: config.servers.iter().map(|a| ServerView::new(a.clone(), now)).collect(),
            probes: vec![None; config.servers.len()],
            next_probe: now,
            check_period: config.check_period,
            down_after: config.down_after,
        }
    }

    /// What is known of every server, in configuration order.
    pub(crate) fn views(&self) -> &[ServerView] {
        &self.views
    }

    /// Where `server` is.
    pub(crate) fn address(&self, server: ServerId) -> &ServerAddress {
        &self.views[server.0].address
    }

    /// The next instant the monitor must act: a probe round, or a server about to count as down.
    pub(crate) fn deadline(&self) -> (Instant, TimerReason) {
        let mut best = (self.next_probe, TimerReason::Probe);
        for (index, view) in self.views.iter().enumerate() {
            let at = view.down_deadline(self.down_after);
            if !view.is_down() && at < best.0 {
                best = (at, TimerReason::DownCheck(index));
            }
        }
        best
    }

    /// Probes every server when a round is due; a probe unanswered for `down_after` has its connection replaced.
    pub(crate) fn tick(&mut self, now: Instant, pool: &mut Pool, out: &mut Outbox) {
        if now < self.next_probe {
            return;
        }
        self.next_probe = now + self.check_period;
        for index in 0..self.views.len() {
            let server = ServerId(index);
            match self.probes[index] {
                None => {
                    self.probes[index] = Some(pool.open(server, Purpose::Probe, out));
                    self.send_probe(now, server, pool, out);
                }
                Some(conn) => match self.views[index].probe_pending_since {
                    None => self.send_probe(now, server, pool, out),
                    Some(sent) if now.saturating_duration_since(sent) >= self.down_after => {
                        // A hung server: drop the connection and try a fresh one next round.
                        pool.close(conn, out);
                        self.probes[index] = None;
                        self.views[index].probe_pending_since = None;
                    }
                    Some(_) => {}
                },
            }
        }
    }

    /// Sends `PING` and `INFO` to `server` now.
    pub(crate) fn send_probe(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let Some(conn) = self.probes[server.0] else { return };
        let waiters = [Waiter::Probe(Probe::Ping), Waiter::Probe(Probe::Info)];
        pool.send(conn, &waiters, Bytes::from_static(PING_AND_INFO), out);
        self.views[server.0].probe_pending_since = Some(now);
    }

    /// Probes at once every server without a probe outstanding (the next choice of master needs fresh `INFO`).
    pub(crate) fn probe_idle_servers(&mut self, now: Instant, pool: &mut Pool, out: &mut Outbox) {
        for index in 0..self.views.len() {
            if self.views[index].probe_pending_since.is_none() {
                self.send_probe(now, ServerId(index), pool, out);
            }
        }
    }

    /// Sends `REPLICAOF` (then `INFO`, so the answer is confirmed at once) to `server` on its probe connection.
    pub(crate) fn send_replicaof(
        &mut self,
        now: Instant,
        server: ServerId,
        master: Option<ServerId>,
        pool: &mut Pool,
        out: &mut Outbox,
    ) {
        let Some(conn) = self.probes[server.0] else { return };
        let target = master.map(|m| self.views[m.0].address.clone());
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
        self.views[server.0].probe_pending_since.get_or_insert(now);
        let address = self.views[server.0].address.clone();
        out.event(Event::ReplicaOfSent { address, master: target });
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
        let view = &mut self.views[server.0];
        match probe {
            Probe::Ping => {
                let valid =
                    frame.starts_with(b"+PONG") || frame.starts_with(b"-LOADING") || frame.starts_with(b"-MASTERDOWN");
                if !valid {
                    return ProbeOutcome::Nothing;
                }
                view.last_ok = Some(now);
                let was = std::mem::replace(&mut view.health, Health::Up);
                if was == Health::Down {
                    out.event(Event::ServerUp { address: view.address.clone() });
                }
                if was == Health::Up {
                    ProbeOutcome::Nothing
                } else {
                    ProbeOutcome::Recovered
                }
            }
            Probe::Info => {
                view.probe_pending_since = None;
                let Some(text) = bulk_payload(frame) else { return ProbeOutcome::Nothing };
                let info = ReplicationInfo::parse(text);
                let changed = view.info.as_ref().is_none_or(|old| old.role != info.role || old.master != info.master);
                if let (true, Some(role)) = (changed, info.role) {
                    out.event(Event::RoleSeen {
                        address: view.address.clone(),
                        role,
                        master: info.master.as_ref().map(|(h, p)| format!("{h}:{p}")),
                    });
                }
                view.info = Some(info);
                view.info_at = Some(now);
                ProbeOutcome::Facts
            }
            Probe::ReplicaOf => {
                let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
                out.event(Event::ReplicaOfAnswered { address: view.address.clone(), reply });
                ProbeOutcome::Nothing
            }
        }
    }

    /// The probe connection of `server` failed or broke.
    pub(crate) fn probe_lost(&mut self, server: ServerId) {
        self.probes[server.0] = None;
        let view = &mut self.views[server.0];
        view.probe_pending_since = None;
        view.health = view.health.max(Health::Unreachable);
    }

    /// A data connection to `server` was refused, or lost with requests on it: it may be dead. Route nothing more
    /// to it until a probe hears from it (asked at once, if its probe connection still works).
    pub(crate) fn data_conn_lost(&mut self, now: Instant, server: ServerId, pool: &mut Pool, out: &mut Outbox) {
        let view = &mut self.views[server.0];
        view.health = view.health.max(Health::Suspect);
        if view.probe_pending_since.is_none() {
            self.send_probe(now, server, pool, out);
        }
    }

    /// Marks down every server that gave no valid reply for `down_after`, and returns them.
    pub(crate) fn detect_down(&mut self, now: Instant, out: &mut Outbox) -> SmallVec<[ServerId; 2]> {
        let mut newly_down = SmallVec::new();
        for (index, view) in self.views.iter_mut().enumerate() {
            if !view.is_down() && now >= view.down_deadline(self.down_after) {
                view.health = Health::Down;
                view.info = None;
                out.event(Event::ServerDown { address: view.address.clone() });
                newly_down.push(ServerId(index));
            }
        }
        newly_down
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
