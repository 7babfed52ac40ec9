//! Sentinel mode: the sentinels' replies and events handed to `Sentinels`, the servers they name watched, and
//! what following them decides carried out.

use super::*;

impl Engine {
    /// A reply from a sentinel.
    #[cold]
    #[inline(never)]
    pub(super) fn sentinel_reply(&mut self, now: Instant, conn: ConnId, query: SentinelQuery, frame: &[u8]) {
        let (Some(sentinels), Some(index)) = (self.sentinels.as_mut(), self.pool.sentinel_of(conn)) else { return };
        sentinels.reply(now, index, query, frame, &mut self.out);
        if query.is_round_question() {
            self.evaluate_failover(now);
            self.run_all_held(now);
        }
    }

    /// A push on a connection with no owner: a sentinel's event prompts a round at once.
    #[cold]
    #[inline(never)]
    pub(super) fn sentinel_push(&mut self, now: Instant, conn: ConnId, frame: &[u8]) {
        let (Some(sentinels), Some(index)) = (self.sentinels.as_mut(), self.pool.sentinel_of(conn)) else { return };
        sentinels.push(now, index, frame, &mut self.out);
        sentinels.tick(now);
        self.execute_orders();
    }

    /// A connection of sentinel `index` (its `subscriber` one, or its query one) is gone: reopened at the next
    /// round; a lost query connection's answer no longer counts.
    pub(super) fn sentinel_lost(&mut self, now: Instant, index: usize, subscriber: bool) {
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        sentinels.lost(index, subscriber);
        self.execute_orders();
        self.evaluate_failover(now);
    }

    /// The server at `address`, watched from now on if it was not (the sentinels named it).
    pub(super) fn server_for(&mut self, now: Instant, address: &ServerAddress) -> ServerId {
        let known = self.monitor.views().iter().find(|(_, v)| v.address.is_named(&address.host, address.port));
        if let Some((id, _)) = known {
            return id;
        }
        // Not watched yet (checked just above), so it is added under the vacant id.
        let server = self.monitor.vacant_id();
        let _ = self.add_server(now, address.clone());
        self.monitor.set_reads_vetoed(server, true);
        server
    }

    /// Sentinel mode: watches every server the sentinels name, lets reads reach only the replicas they list as
    /// healthy, and carries out what following them decides (see [`Sentinels::follow`]).
    pub(super) fn follow_sentinels(&mut self, now: Instant) {
        let routed = self.failover.master();
        let routed_address = routed.and_then(|m| self.monitor.address(m).cloned());
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        for address in sentinels.named_servers(now, routed_address.as_ref(), &mut self.out) {
            self.server_for(now, &address);
        }
        let Some(sentinels) = self.sentinels.as_ref() else { return };
        let following = sentinels.follow(now, self.monitor.views(), routed);
        for (server, readable) in following.reads {
            self.monitor.set_reads_vetoed(server, !readable);
        }
        for decision in following.decisions {
            match &decision {
                Decision::Lose { .. } => self.failover.follow(None, now),
                Decision::Adopt { master, reason } => {
                    self.failover.follow(Some(*master), now);
                    if let Some(address) = self.monitor.address(*master) {
                        self.history.chose(address, reason);
                    }
                }
                _ => {}
            }
            self.carry_out(now, decision);
        }
        if let Some(server) = following.confirm {
            self.confirm_master(now, server);
        }
    }

    /// Asks `server`, which a majority of the sentinels names, for its `INFO` (unless a probe is outstanding), and
    /// the sentinels again soon: it is routed to once it reports `role:master`.
    pub(super) fn confirm_master(&mut self, now: Instant, server: ServerId) {
        let due = self.sentinels.as_mut().is_some_and(|s| s.confirm_due(now));
        if due && self.monitor.views().get(server).is_some_and(|v| v.probe_pending_since.is_none()) {
            self.monitor.send_probe(now, server);
            self.execute_orders();
        }
    }
}
