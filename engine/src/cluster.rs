//! Cluster mode: following a Redis Cluster's slot map. The cluster decides failovers and migrations; this machine
//! reads the map from the nodes, keeps only a map that is not older than the one it holds, says which primary
//! serves a slot, and decides when to read the map again.
//!
//! A refresh asks one node `CLUSTER INFO` and `CLUSTER NODES` on its probe connection. It runs every
//! `refresh_period`, and sooner when something prompts it (a `MOVED`, a lost connection, `CLUSTERDOWN`, a
//! primary that cannot be reached), but at most one at a time and one per [`REFRESH_GAP`], so that a burst of
//! redirections costs one refresh, not one each.
//!
//! A map is refused when the node that sent it does not see a working cluster (`cluster_state` other than `ok`:
//! it may be in a minority partition), once a map is held; or when it gives a slot to a primary with a lower
//! config epoch than the map held does (the node has not heard of a failover or migration yet).
//!
//! A worker engine's cluster is *passive* (`workers` above 1): it never reads the map from the nodes. It adopts
//! the map its deciding engine publishes ([`MapPublication`]), fixes a slot on a `MOVED` as any engine does, and
//! passes on its wish for a refresh ([`Cluster::take_refresh_wanted`]) for the decider to carry out.

use crate::address::ServerAddress;
use crate::cluster_config::ClusterConfig;
use crate::cluster_nodes::{self, NodeEntry};
use crate::cluster_pubsub::Subscriptions;
use crate::cluster_self::ProxyNode;
use crate::cluster_shard_pubsub::ShardSubscriptions;
use crate::cluster_switchover::Switchover;
use crate::cluster_writes::Writes;
use crate::pool::{Line, MapQuery, Orders, Waiter};
use crate::routed::RoutedRequests;
use crate::server_id::ServerId;
use crate::slot_map::SlotMap;
use crate::status::ClusterCounts;
use crate::topology::Views;
use crate::transaction::Transactions;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The shortest time between two refreshes of the map.
pub(crate) const REFRESH_GAP: Duration = Duration::from_millis(200);

/// The most redirections one request follows before its client gets an error: a slot moves once per migration,
/// so more means a map that does not settle.
pub(crate) const MAX_REDIRECTS: u8 = 5;

/// The refresh under way.
#[derive(Clone, Copy, Debug)]
struct Asking {
    node: ServerId,
    since: Instant,
    /// What its `CLUSTER INFO` said, once it answered.
    state_ok: Option<bool>,
}

/// The map a deciding engine hands its workers with a topology.
#[derive(Debug)]
pub(crate) struct MapPublication {
    pub(crate) map: SlotMap,
    /// The decider's count of changes to the map, and of maps read: a worker adopts a publication that differs
    /// from the last one it adopted in either (so a slot it fixed itself after a `MOVED` stays fixed until then).
    pub(crate) version: (u64, u64),
    pub(crate) accepted: Option<(Instant, ServerAddress)>,
}

/// What became of a map a node sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// It is the map now; `changed` when it differs from the one before.
    Accepted { changed: bool },
    /// It was refused, for this reason.
    Refused(String),
}

/// The slot map and its refreshes.
pub(crate) struct Cluster {
    refresh_period: Duration,
    /// How long a refresh may take before another node is asked.
    refresh_timeout: Duration,
    map: SlotMap,
    /// When the map held was accepted, and from which node.
    accepted: Option<(Instant, ServerAddress)>,
    asking: Option<Asking>,
    /// A refresh is wanted as soon as [`REFRESH_GAP`] allows.
    wanted: bool,
    last_started: Option<Instant>,
    /// Which node the next refresh asks, round robin over the candidates.
    rotation: usize,
    orders: Orders,
    /// The requests sent into the cluster, until answered.
    pub(crate) requests: RoutedRequests,
    /// Counts the changes of the map's slot ownership (for `SCAN` walks, which start again when it changed).
    map_version: u64,
    /// The transactions clients are queuing.
    pub(crate) transactions: Transactions,
    /// The proxy as cluster-aware clients see it.
    pub(crate) proxy_node: ProxyNode,
    /// Maps accepted so far.
    accepted_count: u64,
    /// A `SCAN` walk finished a primary when this many maps had been accepted: the next step waits for a newer
    /// one, so that slots moved meanwhile are seen.
    scan_boundary: u64,
    /// Counters for the status page.
    pub(crate) counts: ClusterCounts,
    /// The planned switchover under way (`PROXY FAILOVER host:port`).
    pub(crate) switchover: Option<Switchover>,
    /// Where each client wrote (for its `WAIT`).
    pub(crate) writes: Writes,
    /// What each subscribed client follows (to subscribe it again when its node is lost).
    pub(crate) subscriptions: Subscriptions,
    /// The shard channels each client follows, and the connections they are followed on.
    pub(crate) shard_subscriptions: ShardSubscriptions,
    /// A worker's: the map comes from the decider (see the module documentation).
    passive: bool,
    /// The version of the last publication adopted (passive only).
    adopted: (u64, u64),
}

impl Cluster {
    /// Cluster mode as `config` says; `refresh_timeout` bounds one refresh; `proxy_node` is the proxy as
    /// cluster-aware clients see it. The first refresh is due at once.
    pub(crate) fn new(config: &ClusterConfig, refresh_timeout: Duration, proxy_node: ProxyNode) -> Cluster {
        Cluster {
            refresh_period: config.refresh_period,
            refresh_timeout,
            map: SlotMap::default(),
            accepted: None,
            asking: None,
            wanted: true,
            last_started: None,
            rotation: 0,
            orders: Orders::default(),
            requests: RoutedRequests::default(),
            transactions: Transactions::default(),
            proxy_node,
            map_version: 0,
            accepted_count: 0,
            scan_boundary: 0,
            counts: ClusterCounts::default(),
            switchover: None,
            writes: Writes::default(),
            subscriptions: Subscriptions::default(),
            shard_subscriptions: ShardSubscriptions::default(),
            passive: false,
            adopted: (0, 0),
        }
    }

    /// Makes this a worker's cluster: it reads no map itself from now on (its decider has read the first).
    pub(crate) fn make_passive(&mut self) {
        self.passive = true;
        self.wanted = false;
    }

    /// What a deciding engine publishes of its map.
    pub(crate) fn publication(&self) -> MapPublication {
        MapPublication { map: self.map.clone(), version: self.version(), accepted: self.accepted.clone() }
    }

    /// The map's version for [`MapPublication`]: its changes, and the maps read.
    pub(crate) fn version(&self) -> (u64, u64) {
        (self.map_version, self.accepted_count)
    }

    /// A worker adopts its decider's map, unless it adopted that version already. Returns whether the slots'
    /// owners changed.
    pub(crate) fn adopt(&mut self, published: &MapPublication) -> bool {
        if published.version == self.adopted {
            return false;
        }
        self.adopted = published.version;
        let changed = published.map != self.map;
        if changed {
            self.map_version += 1;
            self.map.clone_from(&published.map);
        }
        self.accepted_count += 1;
        self.accepted.clone_from(&published.accepted);
        changed
    }

    /// A worker's wish for a fresh map since it was last taken, for its decider to read one.
    pub(crate) fn take_refresh_wanted(&mut self) -> bool {
        self.passive && std::mem::take(&mut self.wanted)
    }

    /// Whether `server` leads a shard in the map held.
    pub(crate) fn is_primary(&self, server: ServerId) -> bool {
        self.map.shards().iter().any(|s| s.primary == server)
    }

    /// The map held.
    pub(crate) fn map(&self) -> &SlotMap {
        &self.map
    }

    /// When the map held was accepted, and from which node (None: no map yet).
    pub(crate) fn accepted(&self) -> Option<&(Instant, ServerAddress)> {
        self.accepted.as_ref()
    }

    /// What this machine asked the pool to send, until it is carried out.
    pub(crate) fn orders(&mut self) -> &mut Orders {
        &mut self.orders
    }

    /// The primary that serves `slot` now, if it can be used: the map names one, the cluster has not failed it,
    /// and the proxy's own probes find it routable. None: hold the request until the map or the server changes.
    #[inline]
    pub(crate) fn primary_for(&self, slot: u16, views: &Views) -> Option<ServerId> {
        let shard = self.map.shard_of(slot)?;
        let usable = !shard.failed && views.get(shard.primary).is_some_and(|v| v.is_routable());
        usable.then_some(shard.primary)
    }

    /// Some primary that can be used (for requests that name no key), chosen by `spread`.
    pub(crate) fn any_primary(&self, views: &Views, spread: usize) -> Option<ServerId> {
        let usable: Vec<ServerId> = self.usable_primaries(views).collect();
        usable.get(spread % usable.len().max(1)).copied()
    }

    /// Every primary of the map, once each, if every one can be used (None: some shard waits for a primary).
    pub(crate) fn every_primary(&self, views: &Views) -> Option<Vec<ServerId>> {
        let usable: Vec<ServerId> = self.usable_primaries(views).collect();
        (!usable.is_empty() && usable.len() == self.map.shards().len()).then_some(usable)
    }

    fn usable_primaries<'a>(&'a self, views: &'a Views) -> impl Iterator<Item = ServerId> + 'a {
        self.map
            .shards()
            .iter()
            .filter(|s| !s.failed && views.get(s.primary).is_some_and(|v| v.is_routable()))
            .map(|s| s.primary)
    }

    /// Asks for a refresh as soon as [`REFRESH_GAP`] allows.
    pub(crate) fn want_refresh(&mut self) {
        self.wanted = true;
    }

    /// A `MOVED` said `slot` is served by `primary`: the map is fixed for that slot at once, and read again.
    pub(crate) fn moved(&mut self, slot: u16, primary: ServerId) {
        self.counts.moved += 1;
        if self.map.shard_of(slot).map(|s| s.primary) != Some(primary) {
            self.map_version += 1;
        }
        self.map.point(slot, primary);
        self.wanted = true;
    }

    /// The map version a `SCAN` walk follows, from 1 to 1,023 (0 would make a walk's first cursor 0, which
    /// ends a walk).
    pub(crate) fn scan_version(&self) -> u16 {
        (self.map_version % 1023) as u16 + 1
    }

    /// A `SCAN` walk finished a primary: its next step waits for a map read from now on.
    pub(crate) fn scan_finished_primary(&mut self) {
        self.scan_boundary = self.accepted_count;
        self.wanted = true;
    }

    /// Whether a `SCAN` walk may go on to its next primary: a map was read since a walk last finished one (so a
    /// slot that moved meanwhile, from a primary still to visit to one already visited, restarts the walk).
    pub(crate) fn scan_may_go_on(&self) -> bool {
        self.accepted_count > self.scan_boundary
    }

    /// The primaries a `SCAN` walk visits, in the order of their first slot.
    pub(crate) fn scan_primaries(&self) -> Vec<ServerId> {
        let mut primaries: Vec<(usize, ServerId)> =
            self.map.shards().iter().filter_map(|s| Some((self.map.first_slot_of(s.primary)?, s.primary))).collect();
        primaries.sort_unstable();
        primaries.into_iter().map(|(_, primary)| primary).collect()
    }

    /// Starts a refresh when one is due: on a node the probes find up, round robin. Also wanted while some
    /// shard has no usable primary, or a switchover the proxy asked for is under way, so that a promotion is seen
    /// within [`REFRESH_GAP`] of the cluster making it.
    pub(crate) fn tick(&mut self, now: Instant, views: &Views) {
        if self.passive {
            return;
        }
        if self.asking.is_some_and(|a| now.saturating_duration_since(a.since) >= self.refresh_timeout) {
            self.asking = None;
            self.wanted = true;
        }
        if self.map.shards().iter().any(|s| s.failed || !views.get(s.primary).is_some_and(|v| v.is_routable())) {
            self.wanted = true;
        }
        if self.asking.is_some() || self.next_refresh().is_some_and(|at| now < at) {
            return;
        }
        let candidates: Vec<ServerId> = views
            .iter()
            .filter(|(_, v)| !v.draining && v.last_ok.is_some() && v.is_routable())
            .map(|(id, _)| id)
            .collect();
        self.last_started = Some(now);
        let Some(&node) = candidates.get(self.rotation % candidates.len().max(1)) else {
            // No node answers yet: try again after the gap (the probes' answers prompt a tick sooner).
            self.wanted = true;
            return;
        };
        self.rotation = self.rotation.wrapping_add(1);
        self.wanted = false;
        self.asking = Some(Asking { node, since: now, state_ok: None });
        let waiters = [Waiter::ClusterMap(MapQuery::Info), Waiter::ClusterMap(MapQuery::Nodes)];
        let data = Bytes::from_static(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n*2\r\n$7\r\nCLUSTER\r\n$5\r\nNODES\r\n");
        self.orders.send(Line::Probe(node), &waiters, data);
    }

    /// When the next refresh may start (None: none has started yet, so at once).
    fn next_refresh(&self) -> Option<Instant> {
        let last = self.last_started?;
        let soon = self.wanted || self.switchover.as_ref().is_some_and(Switchover::is_accepted);
        Some(last + if soon { REFRESH_GAP } else { self.refresh_period })
    }

    /// When [`Cluster::tick`] next has something to do, or a resend is due. Before the first refresh there is
    /// none: it starts on the first probe answer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let refresh = match self.asking {
            Some(asking) => Some(asking.since + self.refresh_timeout),
            None if self.passive => None,
            None => self.next_refresh(),
        };
        let switchover = self.switchover.as_ref().map(Switchover::deadline);
        [refresh, self.requests.deadline(), switchover].into_iter().flatten().min()
    }

    /// A `CLUSTER INFO` reply from `node`.
    pub(crate) fn info_reply(&mut self, node: ServerId, frame: &[u8]) {
        if let Some(asking) = self.asking.as_mut().filter(|a| a.node == node) {
            asking.state_ok = Some(cluster_nodes::bulk_text(frame).is_some_and(cluster_nodes::state_ok));
        }
    }

    /// A `CLUSTER NODES` reply from `node` at `address`: the nodes it lists, for the coordinator to name and
    /// offer back as a map; Err with the reason when it is not a usable list.
    pub(crate) fn nodes_reply(
        &mut self,
        node: ServerId,
        address: &ServerAddress,
        frame: &[u8],
    ) -> Result<(Vec<NodeEntry>, bool), String> {
        let asking = self.asking.filter(|a| a.node == node);
        self.asking = None;
        let Some(asking) = asking else { return Err("a refresh that was given up".to_string()) };
        self.counts.refreshes += 1;
        let text = cluster_nodes::bulk_text(frame).ok_or_else(|| {
            self.wanted = true;
            format!("CLUSTER NODES answered {}", String::from_utf8_lossy(&frame[..frame.len().min(80)]).trim_end())
        })?;
        let nodes = cluster_nodes::parse_nodes(text, address).inspect_err(|_| self.wanted = true)?;
        Ok((nodes, asking.state_ok == Some(true)))
    }

    /// The connection a refresh was asked on is gone: ask another node at the next chance.
    pub(crate) fn refresh_lost(&mut self, node: ServerId) {
        if self.asking.is_some_and(|a| a.node == node) {
            self.asking = None;
            self.wanted = true;
        }
    }

    /// A map from `from`, whose node said `state_ok` or not: it replaces the held one unless it is older or the
    /// node cannot be trusted (see the module documentation).
    pub(crate) fn offer(&mut self, now: Instant, map: SlotMap, from: &ServerAddress, state_ok: bool) -> Offer {
        let refuse = |this: &mut Cluster, why: String| {
            this.counts.maps_refused += 1;
            this.wanted = true;
            Offer::Refused(why)
        };
        if map.served_slots() == 0 {
            return refuse(self, format!("{from} says no slot is served"));
        }
        if !state_ok && self.accepted.is_some() {
            return refuse(self, format!("{from} does not see a working cluster (cluster_state is not ok)"));
        }
        if let Some(slot) = map.older_slot_than(&self.map) {
            return refuse(self, format!("{from} gives slot {slot} to a primary with an older config epoch"));
        }
        let changed = map != self.map;
        if changed {
            self.map_version += 1;
        }
        self.accepted_count += 1;
        self.map = map;
        self.accepted = Some((now, from.clone()));
        Offer::Accepted { changed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ServerView;

    fn address(port: u16) -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port }
    }

    fn cluster() -> Cluster {
        let config = ClusterConfig { seeds: vec![address(7000)], refresh_period: Duration::from_secs(5) };
        Cluster::new(&config, Duration::from_secs(1), ProxyNode::new("127.0.0.1", 9999))
    }

    /// Three servers, up and answering.
    fn views(now: Instant) -> Views {
        let mut views = Views::default();
        for port in 7000..7003 {
            let id = views.vacant_id();
            let mut view = ServerView::new(address(port), now);
            view.last_ok = Some(now);
            views.insert(id, view);
        }
        views
    }

    fn id_of(views: &Views) -> impl Fn(&ServerAddress) -> Option<ServerId> + '_ {
        |a| views.iter().find(|(_, v)| v.address == *a).map(|(id, _)| id)
    }

    const NODES: &[u8] = b"$212\r\n\
a 127.0.0.1:7000@1 myself,master - 0 0 1 connected 0-5460\n\
b 127.0.0.1:7001@1 master - 0 0 2 connected 5461-10922\n\
c 127.0.0.1:7002@1 master - 0 0 3 connected 10923-16383\n\r\n";

    #[test]
    fn a_refresh_reads_the_map_and_routes_by_it() {
        let now = Instant::now();
        let views = views(now);
        let mut cluster = cluster();
        cluster.tick(now, &views);
        let orders: Vec<_> = cluster.orders().take().collect();
        assert_eq!(orders.len(), 1, "one refresh");
        let node = match &orders[0] {
            crate::pool::Order::Send { line: Line::Probe(node), .. } => *node,
            other => panic!("unexpected order {other:?}"),
        };
        // Coalesced: no second refresh while one is under way.
        cluster.want_refresh();
        cluster.tick(now, &views);
        assert!(cluster.orders().take().next().is_none());
        cluster.info_reply(node, b"$18\r\ncluster_state:ok\n\r\n");
        let frame = NODES.to_vec();
        let (nodes, ok) = cluster.nodes_reply(node, &address(7000), &frame).expect("valid");
        assert!(ok);
        let map = SlotMap::from_nodes(&nodes, id_of(&views));
        assert_eq!(cluster.offer(now, map, &address(7000), ok), Offer::Accepted { changed: true });
        assert_eq!(cluster.primary_for(12182, &views), id_of(&views)(&address(7002)));
        assert_eq!(cluster.every_primary(&views).map(|p| p.len()), Some(3));
    }

    #[test]
    fn maps_from_a_minority_or_older_are_refused() {
        let now = Instant::now();
        let views = views(now);
        let mut cluster = cluster();
        let nodes = cluster_nodes::parse_nodes(&NODES[6..NODES.len() - 2], &address(7000)).expect("valid");
        let map = SlotMap::from_nodes(&nodes, id_of(&views));
        assert!(matches!(cluster.offer(now, map.clone(), &address(7000), true), Offer::Accepted { .. }));
        assert!(matches!(cluster.offer(now, map.clone(), &address(7001), false), Offer::Refused(_)));
        let older = String::from_utf8_lossy(&NODES[6..NODES.len() - 2]).replace(" 0 0 3 ", " 0 0 0 ");
        let older = cluster_nodes::parse_nodes(older.as_bytes(), &address(7000)).expect("valid");
        let refused = cluster.offer(now, SlotMap::from_nodes(&older, id_of(&views)), &address(7001), true);
        assert!(matches!(refused, Offer::Refused(why) if why.contains("older config epoch")));
        assert_eq!(cluster.counts.maps_refused, 2);
    }

    #[test]
    fn a_refresh_given_up_lets_another_start() {
        let now = Instant::now();
        let views = views(now);
        let mut cluster = cluster();
        cluster.tick(now, &views);
        let first: Vec<_> = cluster.orders().take().collect();
        cluster.tick(now + Duration::from_millis(1500), &views);
        let second: Vec<_> = cluster.orders().take().collect();
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(first, second, "another node is asked");
    }
}
