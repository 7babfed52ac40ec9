//! Faults applied to the model at their scheduled time, and the healing at the end of the fault phase.

use super::super::model::Health;
use super::super::scenario::{Fault, CHECK_PERIOD_MS};
use super::Sim;

impl Sim<'_> {
    pub(super) fn apply_fault(&mut self, fault: Fault) -> Result<(), String> {
        let count = self.cluster.servers.len();
        let valid = match fault {
            Fault::Crash(s) | Fault::Hang(s) | Fault::Unhang(s) => s < count,
            Fault::Restart { server, .. } | Fault::Slow { server, .. } => server < count,
            Fault::Partition { engine, server } | Fault::Heal { engine, server } => {
                server < count && engine < self.engines.len()
            }
        };
        if !valid {
            return Ok(());
        }
        self.note(format!("fault {fault:?}"));
        match fault {
            Fault::Crash(s) => {
                if self.cluster.servers[s].health != Health::Crashed {
                    let recently = self.disturbed_at[s].is_some_and(|at| self.clock.ms() < at + CHECK_PERIOD_MS);
                    for e in 0..self.engines.len() {
                        if !recently && !self.partitions.contains(&(e, s)) && self.routed_master(e) == Some(s) {
                            self.crashed_master[e] = Some((s, self.clock.ms()));
                        }
                    }
                    self.disturbed_at[s] = Some(self.clock.ms());
                    self.cluster.crash(s);
                    self.backlog[s].clear();
                    self.kill_conns(|_, server| server == s);
                }
            }
            Fault::Restart { server, load_ms } => {
                if self.cluster.servers[server].health == Health::Crashed {
                    self.disturbed_at[server] = Some(self.clock.ms());
                    self.cluster.restart(server, self.clock.ms(), load_ms);
                }
            }
            Fault::Hang(s) => {
                if self.cluster.servers[s].health == Health::Up {
                    self.cluster.servers[s].health = Health::Hung;
                    self.cluster.holders_dirty = true;
                }
            }
            Fault::Unhang(s) => self.unhang(s)?,
            Fault::Slow { server, ms } => self.cluster.servers[server].slow_ms = ms,
            Fault::Partition { engine, server } => {
                self.disturbed_at[server] = Some(self.clock.ms());
                for engine in self.one_host(engine) {
                    if self.partitions.insert((engine, server)) {
                        self.kill_conns(|e, s| e == engine && s == server);
                    }
                }
            }
            Fault::Heal { engine, server } => {
                self.disturbed_at[server] = Some(self.clock.ms());
                for engine in self.one_host(engine) {
                    if self.partitions.remove(&(engine, server)) && self.partitions.is_empty() {
                        self.partition_healed_at = Some(self.clock.ms());
                    }
                }
            }
        }
        Ok(())
    }

    /// The engines on engine `e`'s host: a decider and its workers are one process, so a partition cuts off all of
    /// them; independent engines are proxies of their own.
    fn one_host(&self, e: usize) -> Vec<usize> {
        match self.scenario.workers {
            0 => vec![e],
            _ => (0..self.engines.len()).collect(),
        }
    }

    pub(super) fn heal(&mut self) -> Result<(), String> {
        self.healed = true;
        self.note("heal".to_string());
        for &(_, s) in &self.partitions {
            self.disturbed_at[s] = Some(self.clock.ms());
        }
        if !self.partitions.is_empty() {
            self.partitions.clear();
            self.partition_healed_at = Some(self.clock.ms());
        }
        for s in 0..self.cluster.servers.len() {
            self.cluster.servers[s].slow_ms = 0;
            self.unhang(s)?;
            if self.scenario.restart_at_end && self.cluster.servers[s].health == Health::Crashed {
                self.disturbed_at[s] = Some(self.clock.ms());
                self.cluster.restart(s, self.clock.ms(), 0);
            }
        }
        Ok(())
    }

    pub(super) fn unhang(&mut self, s: usize) -> Result<(), String> {
        if self.cluster.servers[s].health != Health::Hung {
            return Ok(());
        }
        self.cluster.servers[s].health = Health::Up;
        self.cluster.holders_dirty = true;
        self.drain_backlog(s)
    }
}
