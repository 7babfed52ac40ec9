//! The Sentinel target's part of the harness: the fuzzed sentinels' answers, events and outages, what those
//! answers named, and the rules that follow from them for what reaches a server.

use super::{Harness, Peer};
use crate::fuzzing::input::{Op, UNIVERSE};
use crate::fuzzing::sentinels::{self, FakeSentinel};
use crate::resp::Request;
use crate::testkit::FakeServer;

impl Harness {
    /// Runs a Sentinel operation: what the sentinels say from now on, an event one publishes, one stopping or
    /// starting. Nothing without sentinels.
    pub(super) fn sentinel_op(&mut self, op: Op) {
        match op {
            Op::SentinelSays { sentinel, master, replicas, style } => {
                if self.sentinels.is_empty() {
                    return;
                }
                let says = FakeSentinel {
                    master: (usize::from(master % 5) < UNIVERSE).then_some(usize::from(master % 5)),
                    listed: replicas & 0x0F,
                    healthy: replicas >> 4,
                    alias: style & 1 != 0,
                    up: true,
                };
                let count = self.sentinels.len();
                let picked = if sentinel >= 0x80 {
                    0..count
                } else {
                    usize::from(sentinel) % count..usize::from(sentinel) % count + 1
                };
                for s in picked {
                    self.sentinels[s] = FakeSentinel { up: self.sentinels[s].up, ..says.clone() };
                }
                if let Some(master) = says.master.filter(|_| style & 2 != 0) {
                    self.promote(master);
                }
            }
            Op::SentinelPush { sentinel, kind } => {
                if self.sentinels.is_empty() {
                    return;
                }
                let s = usize::from(sentinel) % self.sentinels.len();
                let subscription = (0..self.backends.len()).find(|&i| {
                    let b = &self.backends[i];
                    b.open && b.connected && b.subscriber && b.peer == Peer::Sentinel(s)
                });
                if let Some(i) = subscription {
                    let master = self.sentinels[s].master.map_or(0, |m| self.universe[m].port);
                    self.deliver_backend(i, &sentinels::event(kind, master));
                }
            }
            Op::SentinelToggle { sentinel } => {
                if self.sentinels.is_empty() {
                    return;
                }
                let s = usize::from(sentinel) % self.sentinels.len();
                self.sentinels[s].up = !self.sentinels[s].up;
                if !self.sentinels[s].up {
                    for i in 0..self.backends.len() {
                        if self.backends[i].open && self.backends[i].peer == Peer::Sentinel(s) {
                            if self.backends[i].connected {
                                self.close_backend(i);
                            } else {
                                self.backends[i].open = false;
                                self.driver.refused(self.backends[i].id);
                                self.drain();
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Notes what a sentinel's answer, about to be handed to the engine, named.
    pub(super) fn learn(&mut self, named: sentinels::Named) {
        if let Some(master) = named.master {
            self.named_masters.insert(master.port);
            self.named_readable.insert(master.port);
            self.may_connect.insert(master);
        }
        for (replica, healthy) in named.replicas {
            if healthy {
                self.named_readable.insert(replica.port);
            }
            self.may_connect.insert(replica);
        }
    }

    /// Sentinel's failover to universe server `master`: it reports `role:master`, every other server becomes its
    /// replica.
    fn promote(&mut self, master: usize) {
        let address = self.universe[master].clone();
        for (i, server) in self.servers.iter_mut().enumerate() {
            let offset = server.info.offset;
            *server = if i == master {
                FakeServer::master(address.port)
            } else {
                FakeServer::replica_of(self.universe[i].port, &address)
            }
            .with_offset(offset);
        }
    }

    /// Sentinel mode: what reaches a server must be what the sentinels allow (see [`engine_sentinel`]).
    pub(super) fn check_sentinel_rules(&self, port: u16, request: &Request) {
        if self.sentinels.is_empty() {
            return;
        }
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        match name.as_slice() {
            // One of another arity is Redis's to refuse (the engine forwards it): it changes nothing.
            b"REPLICAOF" | b"SLAVEOF" if request.arg_count() == 3 => {
                panic!("REPLICAOF sent to {port} in Sentinel mode")
            }
            b"SET" | b"INCR" | b"DEL" => {
                assert!(self.named_masters.contains(&port), "a write to {port}, which no sentinel named the master")
            }
            b"GET" | b"MGET" | b"SCAN" => assert!(
                self.named_readable.contains(&port),
                "a read to {port}, which no sentinel named the master or a healthy replica"
            ),
            _ => {}
        }
    }
}
