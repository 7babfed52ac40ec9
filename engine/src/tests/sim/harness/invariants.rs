//! The failover invariants, checked after every step, at convergence and at the end (see the harness docs).

use super::super::model::{Health, SimRole};
use super::super::scenario::{
    split_allowance, BUSY_DOWN_AFTER_MS, CRASH_ACTED_ON_MS, DISTURBED_MS, PARTITION_AFTERMATH_MS,
};
use super::Sim;
use crate::testkit::port_of;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

impl Sim<'_> {
    pub(super) fn routed_master(&self, e: usize) -> Option<usize> {
        self.engines[e].as_ref()?.engine.master().and_then(|address| self.cluster.server_at(address))
    }

    /// The servers some engine watches now (not being removed); before any engine runs, the configured ones.
    pub(super) fn members(&self) -> BTreeSet<usize> {
        let started: Vec<&crate::testkit::Driver> = self.engines.iter().flatten().collect();
        if started.is_empty() {
            return (0..self.scenario.master_of.len()).collect();
        }
        started.iter().flat_map(|d| d.engine.servers()).filter_map(|a| self.cluster.server_at(&a)).collect()
    }

    /// With one engine (or one decider for workers), a planned switchover promotes a server that holds every write of the master it moves
    /// away from, while that master runs (new writes are held, those in flight are awaited, and the target must
    /// catch up first).
    pub(super) fn check_switchover_promotion(&self, p: usize) -> Result<(), String> {
        let one_decider = self.engines.len() == 1 || self.scenario.workers > 0;
        let Some(from) = self.switching_from[0].filter(|&m| m != p && one_decider) else { return Ok(()) };
        let servers = &self.cluster.servers;
        if servers[from].health != Health::Up {
            return Ok(());
        }
        let missing = servers[from].log.iter().find(|&&id| !servers[p].holds(&self.cluster.writes[id as usize], id));
        if let Some(&id) = missing {
            return Err(format!(
                "a planned switchover promoted server {p}, which lacks write {:?} of master {from}",
                self.cluster.writes[id as usize].key
            ));
        }
        Ok(())
    }

    pub(super) fn write_executed(&mut self, server: usize, id: u64) {
        let id = id as usize;
        if self.excused.len() <= id {
            self.excused.resize(id + 1, false);
        }
        // Written while some engine does not route to this server: a failover or split view is under way.
        let agreed = (0..self.engines.len()).all(|e| self.routed_master(e) == Some(server));
        self.excused[id] = !agreed;
    }

    pub(super) fn promoted(&mut self, p: usize) {
        let members = self.members();
        let servers = &self.cluster.servers;
        for (id, write) in self.cluster.writes.iter().enumerate() {
            if self.excused[id] || servers[p].holds(write, id as u64) {
                continue;
            }
            let writer_running = servers[write.server].serving(self.clock.ms());
            let better_replica = servers.iter().enumerate().any(|(q, other)| {
                q != p
                    && members.contains(&q)
                    && other.serving(self.clock.ms())
                    && matches!(other.role, SimRole::Replica { .. })
                    && other.priority == servers[p].priority
                    && other.holds(write, id as u64)
            });
            if writer_running || !better_replica {
                self.excused[id] = true;
            }
        }
    }

    pub(super) fn check_step(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.cluster.holders_dirty) {
            // A write no running member holds any more is lost to the proxies (a removed server may keep it).
            let members = self.members();
            let servers = &self.cluster.servers;
            for (id, write) in self.cluster.writes.iter().enumerate() {
                let held =
                    members.iter().any(|&m| servers[m].health == Health::Up && servers[m].holds(write, id as u64));
                if !self.excused[id] && !held {
                    self.excused[id] = true;
                }
            }
        }
        for driver in self.engines.iter().flatten() {
            if let Some(master) = driver.engine.master() {
                if !driver.engine.servers().contains(master) {
                    return Err(format!("an engine routes to {master}, which is not one of its servers"));
                }
            }
        }
        // Split brain is two running masters taking writes: an engine still routing to a server that crashed or
        // hung (it counts it down within down_after) sends writes nowhere.
        let routed: BTreeSet<usize> = (0..self.engines.len())
            .filter_map(|e| self.routed_master(e))
            .filter(|&s| self.cluster.servers[s].health == Health::Up)
            .collect();
        for e in 0..self.engines.len() {
            let Some((s, crashed_at)) = self.crashed_master[e] else { continue };
            let cut_off = self.partitions.contains(&(e, s));
            if self.routed_master(e) != Some(s) || self.cluster.servers[s].health != Health::Crashed || cut_off {
                self.crashed_master[e] = None;
            } else if self.clock.ms() > crashed_at + CRASH_ACTED_ON_MS + self.workers.publication_delay(e) {
                return Err(format!("engine {e} still routes to server {s}, which crashed at {crashed_at} ms"));
            }
        }
        let partitioned = !self.partitions.is_empty()
            || self.partition_healed_at.is_some_and(|at| self.clock.ms() < at + PARTITION_AFTERMATH_MS);
        if routed.len() > 1 && !partitioned {
            let since = *self.split_since.get_or_insert(self.clock.ms());
            if self.clock.ms() - since > split_allowance(self.max_slow) {
                return Err(format!("the engines have routed to different masters {routed:?} since {since} ms"));
            }
        } else {
            self.split_since = None;
        }
        Ok(())
    }

    /// Invariant 6: engine `e` counted the server on `port` down; it must not be running, reachable and answering
    /// within `busy_down_after`.
    pub(super) fn check_counted_down(&self, e: usize, port: u16) -> Result<(), String> {
        let Some(s) = (0..self.cluster.servers.len()).find(|&s| port_of(s) == port) else { return Ok(()) };
        let now = self.clock.ms();
        let disturbed = self.disturbed_at[s].is_some_and(|at| now < at + DISTURBED_MS);
        if self.cluster.servers[s].health == Health::Crashed || disturbed || self.partitions.contains(&(e, s)) {
            return Ok(());
        }
        let last = self.last_probe_answer.get(&(e, s)).copied().unwrap_or(self.engine_start[e]);
        if now - last < BUSY_DOWN_AFTER_MS {
            return Err(format!(
                "engine {e} counted server {s} down although it is running and last answered {} ms ago",
                now - last
            ));
        }
        Ok(())
    }

    pub(super) fn check_converged(&mut self) -> Result<(), String> {
        let members = self.members();
        let servers = &self.cluster.servers;
        let running: Vec<usize> = members.into_iter().filter(|&s| servers[s].health == Health::Up).collect();
        let masters: Vec<usize> = running.iter().copied().filter(|&s| servers[s].role == SimRole::Master).collect();
        let promotable = running.iter().any(|&s| servers[s].role == SimRole::Master || servers[s].priority != 0);
        let routed: Vec<Option<usize>> = (0..self.engines.len()).map(|e| self.routed_master(e)).collect();
        if !promotable {
            if routed.iter().any(Option::is_some) {
                return Err(format!("no running server may be master, yet the engines route to {routed:?}"));
            }
            return Ok(());
        }
        let [master] = masters[..] else {
            return Err(format!("not converged: running masters {masters:?} (running {running:?})"));
        };
        for &s in &running {
            if s != master && (servers[s].role != (SimRole::Replica { master: Some(master) }) || !servers[s].link_up) {
                return Err(format!(
                    "not converged: server {s} is {:?} (link up: {}), master is {master}",
                    servers[s].role, servers[s].link_up
                ));
            }
        }
        if routed.iter().any(|r| *r != Some(master)) {
            return Err(format!("not converged: the engines route to {routed:?}, the master is {master}"));
        }
        self.outcome.final_master = Some(master);
        Ok(())
    }

    pub(super) fn final_checks(&mut self) -> Result<(), String> {
        self.outcome.simulated_ms = self.end_at;
        for (index, client) in self.clients.iter().enumerate() {
            if !client.outstanding.is_empty() {
                return Err(format!("client {index} still waits for {} replies", client.outstanding.len()));
            }
        }
        for (e, admin) in self.admins.iter().enumerate() {
            if let Some(command) = admin.as_ref().and_then(|a| a.outstanding.front()) {
                return Err(format!("engine {e}'s admin client still waits for the reply to {command}"));
            }
        }
        let Some(master) = self.outcome.final_master else { return Ok(()) };
        if let Some(failure) = self.late_failures.first() {
            return Err(format!("a write sent after convergence failed: {failure}"));
        }
        let keys: BTreeMap<&Bytes, usize> =
            self.cluster.writes.iter().enumerate().map(|(id, w)| (&w.key, id)).collect();
        for (index, client) in self.clients.iter().enumerate() {
            for (key, _) in &client.acked {
                let id = keys[key];
                let write = &self.cluster.writes[id];
                if self.cluster.servers[master].holds(write, id as u64) {
                    continue;
                }
                if self.excused[id] {
                    self.outcome.lost_in_window += 1;
                } else {
                    return Err(format!(
                        "client {index}'s acknowledged write {key:?} (run by server {} at {} ms) is lost",
                        write.server, write.at_ms
                    ));
                }
            }
        }
        Ok(())
    }
}
