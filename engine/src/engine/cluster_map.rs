//! Cluster mode following the cluster's slot map: the nodes' answers offered to [`crate::cluster`], the nodes
//! learnt as servers and the ones gone removed, held requests run once a map shows their primary, refreshes and
//! resends moved on in time, and the map shown on the status page.

use super::*;
use crate::cluster::Offer;
use crate::cluster_nodes::NodeEntry;
use crate::cluster_switchover::{Progress, Switchover};
use crate::pool::{Line, MapQuery};
use crate::slot_map::SlotMap;
use crate::status::{ClusterStatus, ShardStatus};

/// Why the cluster is not wholly served, for `/health` (None: every slot has a usable primary); `obstacles` says
/// what stands in the way of each server that has an obstacle (see [`topology::obstacles_suffix`]).
pub(super) fn cluster_unhealthy(status: &ClusterStatus, obstacles: &str) -> Option<String> {
    if status.map_age.is_none() {
        return Some(format!("cluster: no slot map yet: no node has answered CLUSTER NODES{obstacles}"));
    }
    if let Some(shard) = status.shards.iter().find(|s| !s.usable) {
        return Some(format!(
            "cluster: the primary {} of {} slots cannot be used; their requests wait for the cluster to promote a \
             replica",
            shard.primary, shard.slots
        ));
    }
    (status.served_slots < crate::slot::SLOTS)
        .then(|| format!("cluster: only {} of 16384 slots are served", status.served_slots))
}

impl Engine {
    /// A reply to a question about the slot map, from the node `conn` leads to.
    #[inline(never)]
    pub(super) fn cluster_map_reply(&mut self, now: Instant, conn: ConnId, query: MapQuery, frame: &[u8]) {
        let Some(server) = self.pool.server_of(conn) else { return };
        let Some(address) = self.monitor.address(server).cloned() else { return };
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        match query {
            MapQuery::Info => cluster.info_reply(server, frame),
            MapQuery::Nodes => match cluster.nodes_reply(server, &address, frame) {
                Ok((nodes, state_ok)) => self.offer_map(now, &address, &nodes, state_ok),
                Err(reason) => self.out.event(Event::ClusterMapRefused { from: address, reason }),
            },
        }
    }

    /// Offers the map `nodes` describe: its nodes become servers of the proxy (probed, pooled); once accepted,
    /// servers it no longer names are removed and held requests run.
    fn offer_map(&mut self, now: Instant, from: &ServerAddress, nodes: &[NodeEntry], state_ok: bool) {
        for address in nodes.iter().filter(|n| !n.failed).filter_map(|n| n.address.as_ref()) {
            if self.monitor.find(address).is_none() {
                let _ = self.add_server(now, address.clone());
            }
        }
        let monitor = &self.monitor;
        let map = SlotMap::from_nodes(nodes, |address| monitor.find(address));
        let (shards, served_slots) = (map.shards().len(), map.served_slots());
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        match cluster.offer(now, map, from, state_ok) {
            Offer::Refused(reason) => self.out.event(Event::ClusterMapRefused { from: from.clone(), reason }),
            Offer::Accepted { changed } => {
                if changed {
                    self.out.event(Event::ClusterMapChanged { from: from.clone(), shards, served_slots });
                }
                self.forget_unmapped(now);
                let switchover =
                    self.cluster.as_deref().and_then(|c| Some(c.switchover.as_ref()?.map_accepted(c.map())));
                self.end_cluster_switchover(now, switchover);
                self.run_all_held(now);
                self.place_shard_batches(now);
            }
        }
    }

    /// Removes the servers the map held does not name: nodes that left the cluster.
    fn forget_unmapped(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_deref() else { return };
        let gone: Vec<ServerAddress> = self
            .monitor
            .views()
            .iter()
            .filter(|(id, view)| !view.draining && !cluster.map().names(*id))
            .map(|(_, view)| view.address.clone())
            .collect();
        for address in gone {
            if let Some(server) = self.monitor.find(&address) {
                self.monitor.drain(server);
                self.out.event(Event::ServerRemoving { address });
            }
        }
        self.finish_removals(now);
    }

    /// The slot map for the status snapshot (None: not in cluster mode).
    pub(super) fn cluster_status(&self, now: Instant) -> Option<ClusterStatus> {
        let cluster = self.cluster.as_deref()?;
        let views = self.monitor.views();
        let address = |id: ServerId| {
            self.monitor
                .address(id)
                .cloned()
                .unwrap_or_else(|| ServerAddress { host: "a removed server".into(), port: 0 })
        };
        let map = cluster.map();
        let mut shards: Vec<(usize, ShardStatus)> = map
            .shards()
            .iter()
            .zip(map.slots_per_shard())
            .filter(|(_, slots)| *slots > 0)
            .map(|(shard, slots)| {
                let usable = !shard.failed && views.get(shard.primary).is_some_and(|v| v.is_routable());
                let status = ShardStatus {
                    primary: address(shard.primary),
                    replicas: shard.replicas.iter().map(|r| address(*r)).collect(),
                    slots,
                    epoch: shard.epoch,
                    usable,
                };
                (map.first_slot_of(shard.primary).unwrap_or(0), status)
            })
            .collect();
        shards.sort_by_key(|(first, _)| *first);
        Some(ClusterStatus {
            shards: shards.into_iter().map(|(_, s)| s).collect(),
            served_slots: map.served_slots(),
            map_age: cluster.accepted().map(|(at, _)| now.saturating_duration_since(*at)),
            map_from: cluster.accepted().map(|(_, from)| from.clone()),
            in_flight: cluster.requests.len(),
            counts: cluster.counts,
        })
    }

    /// Moves the cluster machine on: refreshes due, resends due.
    #[inline(never)]
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let clients = &self.clients;
        cluster.transactions.retain_clients(|c| clients.contains(c));
        cluster.writes.tidy(clients.count(), |c| clients.contains(c));
        cluster.subscriptions.retain_clients(|c| clients.contains(c));
        cluster.tick(now, self.monitor.views());
        self.pool.execute(cluster.orders(), &mut self.out);
        let switchover = cluster.switchover.as_ref().map(|s| s.expired(now));
        self.end_cluster_switchover(now, switchover);
        self.resend_due(now);
    }

    /// Starts a planned switchover in cluster mode (`PROXY FAILOVER host:port`): `CLUSTER FAILOVER` to that
    /// replica, the admin `conn` answered once a map shows it as a primary, or with the error that ended it.
    pub(super) fn begin_cluster_switchover(
        &mut self,
        now: Instant,
        conn: ConnId,
        target: ServerAddress,
    ) -> Result<(), String> {
        let Some(cluster) = self.cluster.as_deref() else { return Err("ERR not in cluster mode".into()) };
        if cluster.switchover.is_some() {
            return Err("ERR a planned switchover is under way: wait for its reply".into());
        }
        let replica = self.monitor.find(&target).ok_or_else(|| format!("ERR {target} is not a node of the cluster"))?;
        if !self.monitor.views().get(replica).is_some_and(|v| v.last_ok.is_some() && v.is_routable()) {
            return Err(format!("ERR {target} does not answer the proxy's probes now"));
        }
        let Some(seq) = self.clients.reserve_slot(conn) else { return Ok(()) };
        let switchover = match Switchover::begin(cluster.map(), replica, target.clone(), (conn, seq), now) {
            Ok(switchover) => switchover,
            Err(why) => {
                self.deliver(now, conn, seq, resp::error_reply(&format!("ERR cannot fail over: {why}")));
                return Ok(());
            }
        };
        let from = self.monitor.address(switchover.primary).cloned();
        let Some(cluster) = self.cluster.as_deref_mut() else { return Ok(()) };
        cluster.orders().send(Line::Probe(replica), &[Waiter::ClusterFailover], Switchover::request());
        cluster.switchover = Some(switchover);
        self.pool.execute(cluster.orders(), &mut self.out);
        if let Some(from) = from {
            self.out.event(Event::ClusterSwitchoverStarted { from, to: target });
        }
        Ok(())
    }

    /// The replica's reply to the switchover's `CLUSTER FAILOVER`: once it accepted, a fresh map shows the outcome.
    pub(super) fn cluster_failover_reply(&mut self, now: Instant, frame: &[u8]) {
        let Some(cluster) = self.cluster.as_deref_mut() else { return };
        let progress = cluster.switchover.as_mut().map(|s| s.answered(frame));
        if progress == Some(Progress::Waiting) {
            cluster.want_refresh();
        }
        self.end_cluster_switchover(now, progress);
    }

    /// The connection that carried the switchover's `CLUSTER FAILOVER` broke before its reply.
    pub(super) fn cluster_failover_lost(&mut self, now: Instant) {
        let progress = self.cluster.as_deref().and_then(|c| Some(c.switchover.as_ref()?.lost()));
        self.end_cluster_switchover(now, progress);
    }

    /// Answers the admin when the switchover is `Done`.
    fn end_cluster_switchover(&mut self, now: Instant, progress: Option<Progress>) {
        let Some(Progress::Done(outcome)) = progress else { return };
        let Some(switchover) = self.cluster.as_deref_mut().and_then(|c| c.switchover.take()) else { return };
        let (reply, outcome) = match outcome {
            Ok(text) => (resp::simple_reply(&format!("OK {text}")), text),
            Err(text) => {
                (resp::error_reply(&format!("ERR planned switchover failed: {text}")), format!("failed: {text}"))
            }
        };
        self.out.event(Event::SwitchoverEnded { outcome });
        let (client, seq) = switchover.requester;
        self.deliver(now, client, seq, reply);
    }
}
