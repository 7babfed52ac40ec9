//! The operator: `PROXY ADD/REMOVE/FAILOVER` sent by each engine's admin client, and reloads of an edited server
//! list ([`crate::Engine::reconfigure`]), applied at their scheduled time (see [`AdminOp`]).
//!
//! `ADD`, `REMOVE` and reloads go to every engine (the same list to each); `FAILOVER` to engine 0 only (the
//! others follow a promotion as they follow another proxy's). A refusal is an answer like any other: it is
//! counted, and the run goes on.

use super::super::scenario::AdminOp;
use super::Sim;
use crate::address::ServerAddress;
use crate::config::Mode;
use crate::resp::{Limits, ReplyScanner, Request};
use crate::ConnId;
use bytes::BytesMut;
use std::collections::VecDeque;

/// An engine's admin client (accepted on its admin listener).
pub(super) struct AdminClient {
    pub(super) conn: ConnId,
    pub(super) readable: bool,
    to_engine: BytesMut,
    from_engine: BytesMut,
    scanner: ReplyScanner,
    /// The commands awaiting their reply, as sent.
    pub(super) outstanding: VecDeque<String>,
}

impl AdminClient {
    /// The admin client on `conn`.
    pub(super) fn new(conn: ConnId) -> AdminClient {
        AdminClient {
            conn,
            readable: true,
            to_engine: BytesMut::new(),
            from_engine: BytesMut::new(),
            scanner: ReplyScanner::new(Limits::default()),
            outstanding: VecDeque::new(),
        }
    }
}

impl Sim<'_> {
    pub(super) fn apply_admin(&mut self, op: AdminOp) -> Result<(), String> {
        let count = self.cluster.servers.len();
        let valid = match op {
            AdminOp::Add(s) | AdminOp::AddOther(s) | AdminOp::Remove(s) | AdminOp::Failover(Some(s)) => s < count,
            AdminOp::Failover(None) => true,
            AdminOp::Reload(reload) => {
                [reload.add, reload.remove, reload.readdress].iter().flatten().all(|&s| s < count)
            }
        };
        if !valid {
            return Ok(());
        }
        self.note(format!("admin {op:?}"));
        match op {
            AdminOp::Add(s) => {
                for e in self.started() {
                    // Under the address it is watched by, if it is (refused): two addresses of one server watched
                    // at once are an operator's mistake, tried only by `AddOther`.
                    let address = self.address_known_to(e, s).unwrap_or_else(|| self.operator_address[s].clone());
                    self.admin_send(e, &["PROXY", "ADD", &address.to_string()])?;
                }
            }
            AdminOp::AddOther(s) => {
                for e in self.started() {
                    let server = &self.cluster.servers[s];
                    let known = self.address_known_to(e, s);
                    let other = if known.as_ref() == Some(&server.address) { &server.alias } else { &server.address };
                    self.admin_send(e, &["PROXY", "ADD", &other.to_string()])?;
                }
            }
            AdminOp::Remove(s) => {
                for e in self.started() {
                    let address = self.address_known_to(e, s).unwrap_or_else(|| self.operator_address[s].clone());
                    self.admin_send(e, &["PROXY", "REMOVE", &address.to_string()])?;
                }
            }
            AdminOp::Failover(target) => {
                if self.engines[0].is_some() {
                    match target {
                        None => self.admin_send(0, &["PROXY", "FAILOVER"])?,
                        Some(s) => {
                            let address =
                                self.address_known_to(0, s).unwrap_or_else(|| self.operator_address[s].clone());
                            self.admin_send(0, &["PROXY", "FAILOVER", &address.to_string()])?;
                        }
                    }
                }
            }
            AdminOp::Reload(reload) => {
                let Some(driver) = self.engines[0].as_ref() else { return Ok(()) };
                let mut list = driver.engine.servers();
                if let Some(r) = reload.remove {
                    list.retain(|a| self.cluster.server_at(a) != Some(r));
                }
                if let Some(a) = reload.add {
                    if !list.iter().any(|listed| self.cluster.server_at(listed) == Some(a)) {
                        list.push(self.operator_address[a].clone());
                    }
                }
                let mut readdressed = None;
                if let Some(x) = reload.readdress {
                    if let Some(at) = list.iter().position(|listed| self.cluster.server_at(listed) == Some(x)) {
                        let server = &self.cluster.servers[x];
                        let other = if list[at] == server.address { &server.alias } else { &server.address };
                        readdressed = Some((x, other.clone()));
                        list[at] = other.clone();
                    }
                }
                if list.is_empty() {
                    return Ok(());
                }
                let len = list.len();
                list.rotate_left(reload.rotate % len);
                for e in self.started() {
                    let accepted = self.reload(e, &list, reload.flip_mode)?;
                    if let Some((x, address)) = readdressed.take().filter(|_| accepted && e == 0) {
                        self.operator_address[x] = address;
                    }
                }
            }
        }
        Ok(())
    }

    /// Engine `e` reloads a configuration with `servers` (and the other mode when `flip_mode`); whether it took it.
    fn reload(&mut self, e: usize, servers: &[ServerAddress], flip_mode: bool) -> Result<bool, String> {
        let mut config = self.configs[e].clone();
        config.servers = servers.to_vec();
        if flip_mode {
            config.mode = match config.mode {
                Mode::AllToMaster => Mode::ReadsToSlaves,
                Mode::ReadsToSlaves => Mode::AllToMaster,
            };
        }
        let listed: Vec<String> = servers.iter().map(ToString::to_string).collect();
        let now = self.clock.now();
        let accepted = match self.driver(e).engine.reconfigure(now, config.clone()) {
            Ok(changes) => {
                self.outcome.admin_done += 1;
                self.note(format!("engine {e} reloaded [{}]: {}", listed.join(" "), changes.join("; ")));
                if config.mode != self.configs[e].mode {
                    // An iteration under way is no longer one whose cursors the engine follows throughout.
                    for client in self.clients.iter_mut().filter(|c| c.engine == e) {
                        if let Some(scan) = client.scan.as_mut() {
                            scan.exempt = true;
                        }
                    }
                }
                self.configs[e] = config;
                true
            }
            Err(why) => {
                self.outcome.admin_refused += 1;
                self.note(format!("engine {e} refused the reload [{}]: {why}", listed.join(" ")));
                false
            }
        };
        self.drain(e)?;
        Ok(accepted)
    }

    /// The engines started so far.
    fn started(&self) -> Vec<usize> {
        (0..self.engines.len()).filter(|&e| self.engines[e].is_some()).collect()
    }

    /// The address engine `e` watches server `s` under, if it watches it (not being removed).
    fn address_known_to(&self, e: usize, s: usize) -> Option<ServerAddress> {
        let driver = self.engines[e].as_ref()?;
        driver.engine.servers().into_iter().find(|a| self.cluster.server_at(a) == Some(s))
    }

    /// Engine `e`'s admin client sends `words`.
    fn admin_send(&mut self, e: usize, words: &[&str]) -> Result<(), String> {
        let Some(admin) = self.admins[e].as_mut() else { return Ok(()) };
        admin.to_engine.extend_from_slice(Request::from_args(words).frame());
        admin.outstanding.push_back(words.join(" "));
        self.feed_admin(e)
    }

    /// Hands engine `e` what its admin client wrote, unless the engine is not reading it.
    pub(super) fn feed_admin(&mut self, e: usize) -> Result<(), String> {
        let Some(admin) = self.admins[e].as_mut().filter(|a| a.readable && !a.to_engine.is_empty()) else {
            return Ok(());
        };
        let (conn, data) = (admin.conn, admin.to_engine.split());
        self.driver(e).feed(conn, &data);
        self.drain(e)
    }

    /// Engine `e` answered its admin client: one reply per command, in order, `+...` or an error.
    pub(super) fn admin_receive(&mut self, e: usize, data: &[u8]) -> Result<(), String> {
        let admin = self.admins[e].as_mut().expect("only a started engine answers its admin client");
        admin.from_engine.extend_from_slice(data);
        loop {
            let admin = self.admins[e].as_mut().expect("still there");
            let reply = match admin.scanner.next_reply(&mut admin.from_engine) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(()),
                Err(error) => return Err(format!("engine {e}'s admin client got a malformed reply: {error}")),
            };
            let Some(command) = admin.outstanding.pop_front() else {
                return Err(format!("engine {e}'s admin client got a reply it did not ask for: {reply:?}"));
            };
            let text = String::from_utf8_lossy(&reply).trim_end().to_string();
            match reply.first() {
                Some(b'+') => self.outcome.admin_done += 1,
                Some(b'-') => self.outcome.admin_refused += 1,
                _ => return Err(format!("engine {e}: {command} got {text:?}")),
            }
            self.note(format!("engine {e}: {command} -> {text}"));
        }
    }

    /// Engine `e` began to remove the server at `address`: its iterations under way are marked, and which writes
    /// a member still holds may have changed.
    pub(super) fn removal_began(&mut self, e: usize, address: &ServerAddress) {
        self.cluster.holders_dirty = true;
        let Some(removed) = self.cluster.server_at(address) else { return };
        for (index, client) in self.clients.iter_mut().enumerate() {
            let Some(scan) = client.scan.as_mut().filter(|_| client.engine == e) else { continue };
            if let Some(serving) = self.scan_traces[index].last().map(|exec| exec.process.0) {
                scan.removals.push((serving, removed));
            }
        }
    }
}
