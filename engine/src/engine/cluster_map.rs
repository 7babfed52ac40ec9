//! Cluster mode following the cluster's slot map: the nodes' answers offered to [`crate::cluster`], the nodes
//! learnt as servers and the ones gone removed, held requests run once a map shows their primary, refreshes and
//! resends moved on in time, and the map shown on the status page.

use super::*;
use crate::cluster::Offer;
use crate::cluster_nodes::NodeEntry;
use crate::pool::MapQuery;
use crate::slot_map::SlotMap;
use crate::status::{ClusterStatus, ShardStatus};

/// Why the cluster is not wholly served, for `/health` (None: every slot has a usable primary).
pub(super) fn cluster_unhealthy(status: &ClusterStatus) -> Option<String> {
    if status.map_age.is_none() {
        return Some("cluster: no slot map yet (no seed has answered CLUSTER NODES)".to_string());
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
                self.run_all_held(now);
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
        cluster.tick(now, self.monitor.views());
        self.pool.execute(cluster.orders(), &mut self.out);
        self.resend_due(now);
    }
}
