//! One decider and its worker engines ([`Scenario::workers`]): the decider's topology carried to every worker a
//! few milliseconds later (in a different order per publication), the workers' confirmations carried back, and
//! the invariants of one decision for many workers:
//!
//! - no worker sends `REPLICAOF` or decides anything;
//! - no write reaches an old master once any worker has written to a newer one: masters are numbered in the order
//!   the decider adopted them (a server adopted again gets a new number), and a worker's write on a connection it
//!   still has open never runs on a server whose number is lower than one a worker's write already ran on. (A write
//!   on a connection the worker closed, run by a hung server when it resumes, reaches no client as acknowledged:
//!   not counted.)

use super::super::scenario::Scenario;
use super::network::Net;
use super::Sim;
use crate::testkit::Driver;
use crate::{Engine, Topology};

/// How late the busiest worker picks up a publication (ms).
const BUSY_WORKER_MS: u64 = 20;

/// What the harness keeps of the decider and its workers.
pub(super) struct Workers {
    /// How many worker engines (0: the engines are independent proxies).
    count: usize,
    /// The decider's last publication (a worker starting late starts from it).
    published: Option<Topology>,
    /// Per engine, the epoch it confirmed last (the decider's entry is unused).
    confirmed: Vec<u64>,
    /// The least confirmation handed to the decider so far.
    told_decider: u64,
    /// Per model server, the number it got when the decider last adopted it (0: never).
    master_number: Vec<u64>,
    /// The greatest master number a worker's write ran on.
    written_number: u64,
}

impl Workers {
    pub(super) fn new(scenario: &Scenario, engines: usize) -> Workers {
        let servers = scenario.master_of.len() + scenario.spares;
        Workers {
            count: scenario.workers,
            published: None,
            confirmed: vec![0; engines],
            told_decider: 0,
            master_number: vec![0; servers],
            written_number: 0,
        }
    }

    /// How long worker `worker` takes to pick up publication `epoch`: each worker's thread after a delay of its
    /// own, and the last one is a busy thread, late by more than a promotion takes.
    fn delay(&self, worker: usize, epoch: u64) -> u64 {
        let busy = if worker == self.count { BUSY_WORKER_MS } else { 0 };
        1 + (worker as u64 * 7 + epoch * 3) % 4 + busy
    }

    /// The longest engine `e` takes to pick up a publication (0 for the decider and independent engines): a worker
    /// stops routing to a crashed master when its decider's word arrives, unless its own connection is refused
    /// first.
    pub(super) fn publication_delay(&self, e: usize) -> u64 {
        match self.is_worker(e) {
            true => (0..4).map(|epoch| self.delay(e, epoch)).max().unwrap_or(0),
            false => 0,
        }
    }

    /// Whether engine `e` is a worker.
    pub(super) fn is_worker(&self, e: usize) -> bool {
        self.count > 0 && e > 0
    }

    /// Whether engine `e` serves the clients, and whether it serves the admin client.
    pub(super) fn serves(&self, e: usize) -> (bool, bool) {
        match self.count {
            0 => (true, true),
            _ => (e > 0, e == 0),
        }
    }

    /// The decider adopted server `s` as the master.
    pub(super) fn adopted(&mut self, s: usize) {
        let next = self.master_number.iter().max().copied().unwrap_or(0) + 1;
        if let Some(number) = self.master_number.get_mut(s) {
            *number = next;
        }
    }

    /// Engine `e`'s write ran on server `s`, on a connection the engine has `open`.
    pub(super) fn check_write(&mut self, e: usize, s: usize, open: bool) -> Result<(), String> {
        if !self.is_worker(e) || !open {
            return Ok(());
        }
        let number = self.master_number.get(s).copied().unwrap_or(0);
        if number < self.written_number {
            return Err(format!(
                "worker engine {e} wrote to server {s} (master number {number}) after a worker wrote to master \
                 number {}",
                self.written_number
            ));
        }
        self.written_number = number;
        Ok(())
    }
}

impl Sim<'_> {
    /// A driver for engine `e`: the decider's or a worker's (from the decider's last publication) with workers,
    /// otherwise an independent engine.
    pub(super) fn new_driver(&mut self, e: usize) -> Result<Driver, String> {
        let (config, now) = (self.configs[e].clone(), self.clock.now());
        let engine = match (self.workers.count, e) {
            (0, _) => Engine::new(config.clone(), now),
            (_, 0) => Engine::new_decider(config.clone(), now)?,
            _ => {
                let Some(topology) = self.workers.published.as_ref() else {
                    return Err(format!("worker engine {e} starts before its decider published"));
                };
                Engine::new_worker(config.clone(), now, topology)?
            }
        };
        Ok(Driver::with_engine(engine, config, self.clock))
    }

    /// After engine `e` acted: the decider's new topology goes to every worker, a worker's confirmation (once
    /// every worker has confirmed as much) to the decider.
    pub(super) fn pass_topology(&mut self, e: usize) -> Result<(), String> {
        if self.workers.count == 0 {
            return Ok(());
        }
        let Some(driver) = self.engines[e].as_mut() else { return Ok(()) };
        if e == 0 {
            let published: Vec<Topology> = std::iter::from_fn(|| driver.engine.poll_topology()).collect();
            for topology in published {
                let epoch = topology.epoch();
                for worker in 1..=self.workers.count {
                    let delay = self.workers.delay(worker, epoch);
                    let topology = Box::new(topology.clone());
                    self.schedule(self.clock.ms() + delay, Net::Publish { worker, topology });
                }
                self.workers.published = Some(topology);
            }
            return Ok(());
        }
        self.workers.confirmed[e] = driver.engine.confirmed_epoch();
        let least = self.workers.confirmed[1..].iter().copied().min().unwrap_or(0);
        if least > self.workers.told_decider {
            self.workers.told_decider = least;
            self.schedule(self.clock.ms() + 1, Net::Confirm { epoch: least });
        }
        Ok(())
    }

    /// Worker `worker` takes `topology`.
    pub(super) fn publish_to(&mut self, worker: usize, topology: &Topology) -> Result<(), String> {
        if self.engines[worker].is_none() {
            return Ok(());
        }
        let now = self.clock.now();
        self.driver(worker).engine.follow(now, topology);
        self.drain(worker)
    }

    /// The decider hears that every worker confirmed `epoch`.
    pub(super) fn confirm_to_decider(&mut self, epoch: u64) -> Result<(), String> {
        if self.engines[0].is_none() {
            return Ok(());
        }
        let now = self.clock.now();
        self.driver(0).engine.workers_confirmed(now, epoch);
        self.drain(0)
    }
}
