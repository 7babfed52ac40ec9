//! Many workers, one decision: the [`Topology`] the deciding engine publishes to the engines of the other worker
//! threads, the [`Publisher`] that numbers it and holds a new master back until every worker has let go of the
//! old one, and the [`Following`] a worker keeps of what it applied and may confirm.
//!
//! The decider probes, applies the failover rules and sends `REPLICAOF` (or follows the sentinels, or reads the
//! cluster's slot map); workers only route. A worker confirms an
//! epoch once it has applied it and, if that epoch took its master away, once none of its requests is still in
//! flight to the old master. The decider publishes a different master only after every worker confirmed the
//! epoch that took the old one away, and a planned switchover reads the offsets only after that too: so no worker
//! writes to an old master after any worker has written to the new one.

use crate::cluster::{Cluster, MapPublication};
use crate::server_id::ServerId;
use crate::topology::{Health, Views};
use std::sync::Arc;
use std::time::Instant;

/// The servers as the deciding engine sees them, for the worker engines: every server's view, the master writes
/// go to, whether a planned switchover holds writes, and in cluster mode the slot map. Each publication has a
/// greater epoch. Immutable once published: share it between threads in an `Arc`.
#[derive(Clone, Debug)]
pub struct Topology {
    epoch: u64,
    pub(crate) views: Views,
    pub(crate) master: Option<ServerId>,
    /// A planned switchover holds writes away from this master: its requests in flight run to the end.
    pub(crate) switching_from: Option<ServerId>,
    /// Cluster mode: the slot map.
    pub(crate) cluster: Option<Arc<MapPublication>>,
}

impl Topology {
    /// Its number: greater for every later publication of the same decider.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// What a worker's routing depends on, per server: when it changes, the decider publishes again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Facts {
    server: ServerId,
    health: Health,
    draining: bool,
    incarnation: u64,
    info_at: Option<Instant>,
    last_ok: Option<Instant>,
    /// Workers judge a late probe by it, as the decider does (reads stay off a server whose probe is late).
    probe_pending_since: Option<Instant>,
    /// Sentinel mode: whether the sentinels keep reads off it.
    reads_vetoed: bool,
}

fn facts(views: &Views) -> Vec<Facts> {
    views
        .iter()
        .map(|(server, v)| Facts {
            server,
            health: v.health,
            draining: v.draining,
            incarnation: v.incarnation,
            info_at: v.info_at,
            last_ok: v.last_ok,
            probe_pending_since: v.probe_pending_since,
            reads_vetoed: v.reads_vetoed,
        })
        .collect()
}

/// The decider's side: the last topology published and the epochs the workers confirmed.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    /// The last epoch published (0: none yet).
    epoch: u64,
    published_master: Option<ServerId>,
    /// The last master published (kept while none is): that one may come back without a wait, since no worker
    /// has written to another since.
    last_master: Option<ServerId>,
    published_switching: Option<ServerId>,
    published_facts: Vec<Facts>,
    /// The version of the slot map published last (cluster mode).
    published_map: Option<(u64, u64)>,
    /// The epoch that took the last master away: every worker confirms it before another master is published.
    barrier: u64,
    /// The greatest epoch every worker has confirmed.
    confirmed: u64,
}

impl Publisher {
    /// The topology to publish now, if it differs from the last one: `master` as the failover rules route it,
    /// except that a different master than the one published last waits until every worker let go of the old one
    /// (the workers meanwhile hold their writes). The same master back (a planned switchover aborted, a master
    /// lost and found again) needs no wait: no worker has written to another meanwhile, and one still letting go
    /// of it (a blocking command in flight) would otherwise hold every write until its command ends.
    pub(crate) fn next(
        &mut self,
        views: &Views,
        master: Option<ServerId>,
        switching_from: Option<ServerId>,
        cluster: Option<&Cluster>,
    ) -> Option<Topology> {
        let master = match (self.published_master, master) {
            (Some(old), Some(new)) if old != new => None,
            (None, Some(new)) if Some(new) != self.last_master && self.confirmed < self.barrier => None,
            (_, wanted) => wanted,
        };
        let facts = facts(views);
        let map_version = cluster.map(Cluster::version);
        let same = master == self.published_master
            && switching_from == self.published_switching
            && map_version == self.published_map
            && facts == self.published_facts;
        if self.epoch > 0 && same {
            return None;
        }
        self.epoch += 1;
        if self.published_master.is_some() && master != self.published_master {
            self.barrier = self.epoch;
        }
        self.published_master = master;
        if master.is_some() {
            self.last_master = master;
        }
        self.published_switching = switching_from;
        self.published_facts = facts;
        self.published_map = map_version;
        // The map is copied only when published (not on every input the decider takes).
        let cluster = cluster.map(|c| Arc::new(c.publication()));
        Some(Topology { epoch: self.epoch, views: views.clone(), master, switching_from, cluster })
    }

    /// Every worker has confirmed `epoch` (the least of their confirmations).
    pub(crate) fn confirmed(&mut self, epoch: u64) {
        self.confirmed = self.confirmed.max(epoch.min(self.epoch));
    }

    /// While no master is wanted (a planned switchover holds writes): whether some worker may still write to the
    /// master published last, because it has not been told, or has not confirmed, that writes are held.
    pub(crate) fn letting_go(&self) -> bool {
        self.published_master.is_some() || self.confirmed < self.barrier
    }
}

/// A worker's side: the epoch it applied, and the master it is still letting go of.
#[derive(Debug, Default)]
pub(crate) struct Following {
    applied: u64,
    confirmed: u64,
    /// A master the last applied epochs took away, while requests to it may still be in flight.
    letting_go: Option<ServerId>,
    /// The master this worker stopped writing to on its own evidence (a refused connection), and when: not routed
    /// to again until its decider has heard from it since, or has judged it too.
    dropped: Option<(ServerId, Instant)>,
}

impl Following {
    /// Whether `topology` is newer than what was applied.
    pub(crate) fn is_new(&self, topology: &Topology) -> bool {
        topology.epoch > self.applied
    }

    /// `topology` is applied; `old_master` (if it is not its master) may still have requests in flight.
    pub(crate) fn applied(&mut self, topology: &Topology, old_master: Option<ServerId>) {
        self.applied = topology.epoch;
        if let Some(old) = old_master.filter(|old| topology.master != Some(*old)) {
            self.letting_go = Some(old);
        } else if self.letting_go.is_some_and(|old| topology.master == Some(old)) {
            self.letting_go = None;
        }
    }

    /// The worker saw its master `server` gone at `now` (a refused connection) and stopped writing to it.
    pub(crate) fn drop_master(&mut self, server: ServerId, now: Instant) {
        self.dropped = Some((server, now));
    }

    /// The master `topology` routes to, unless this worker dropped it and the topology holds no news of it since
    /// (an answer after the drop, or the server counted down).
    pub(crate) fn master_of(&mut self, topology: &Topology) -> Option<ServerId> {
        let (master, views) = (topology.master?, &topology.views);
        let Some((dropped, at)) = self.dropped else { return Some(master) };
        let news = views.get(dropped).is_none_or(|v| v.is_down() || v.last_ok.is_some_and(|ok| ok > at));
        if news || master != dropped {
            self.dropped = None;
            return Some(master);
        }
        None
    }

    /// The master being let go of, if any.
    pub(crate) fn letting_go(&self) -> Option<ServerId> {
        self.letting_go
    }

    /// The epoch this worker confirms, given the requests still in flight to the master it lets go of.
    pub(crate) fn confirm(&mut self, in_flight_to_old: usize) -> u64 {
        if self.letting_go.is_some() && in_flight_to_old > 0 {
            return self.confirmed;
        }
        self.letting_go = None;
        self.confirmed = self.applied;
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ServerAddress;
    use crate::server_id::ServerTable;
    use crate::topology::ServerView;

    fn views(count: usize) -> (Views, Vec<ServerId>) {
        let now = Instant::now();
        let mut views = ServerTable::default();
        let mut ids = Vec::new();
        for port in 0..count {
            let id = views.vacant_id();
            views
                .insert(id, ServerView::new(ServerAddress { host: "127.0.0.1".into(), port: 7000 + port as u16 }, now));
            ids.push(id);
        }
        (views, ids)
    }

    #[test]
    fn publishes_only_what_changed() {
        let (mut views, ids) = views(2);
        let mut publisher = Publisher::default();
        let first = publisher.next(&views, Some(ids[0]), None, None).expect("the first is always published");
        assert_eq!((first.epoch(), first.master), (1, Some(ids[0])));
        assert!(publisher.next(&views, Some(ids[0]), None, None).is_none());
        views.get_mut(ids[1]).expect("watched").health = Health::Down;
        assert_eq!(publisher.next(&views, Some(ids[0]), None, None).map(|t| t.epoch()), Some(2));
    }

    #[test]
    fn a_new_master_waits_until_every_worker_let_go_of_the_old_one() {
        let (views, ids) = views(2);
        let mut publisher = Publisher::default();
        let _ = publisher.next(&views, Some(ids[0]), None, None);
        publisher.confirmed(1);
        let away = publisher.next(&views, Some(ids[1]), None, None).expect("the old master is taken away first");
        assert_eq!((away.epoch(), away.master), (2, None));
        assert!(publisher.letting_go());
        assert!(publisher.next(&views, Some(ids[1]), None, None).is_none(), "nothing new until the workers confirm");
        publisher.confirmed(1);
        assert!(publisher.next(&views, Some(ids[1]), None, None).is_none(), "an older confirmation is not enough");
        publisher.confirmed(2);
        assert!(!publisher.letting_go());
        let new = publisher.next(&views, Some(ids[1]), None, None).expect("now the new master");
        assert_eq!((new.epoch(), new.master), (3, Some(ids[1])));
    }

    #[test]
    fn the_same_master_back_needs_no_wait_but_another_after_it_does() {
        let (views, ids) = views(2);
        let mut publisher = Publisher::default();
        let _ = publisher.next(&views, Some(ids[0]), None, None);
        assert_eq!(
            publisher.next(&views, None, Some(ids[0]), None).map(|t| t.master),
            Some(None),
            "a switchover holds"
        );
        assert!(publisher.letting_go());
        let back = publisher.next(&views, Some(ids[0]), None, None).expect("aborted: the old master back at once");
        assert_eq!((back.epoch(), back.master), (3, Some(ids[0])));
        assert_eq!(publisher.next(&views, Some(ids[1]), None, None).map(|t| t.master), Some(None));
        assert!(publisher.next(&views, Some(ids[1]), None, None).is_none(), "another master waits for the workers");
        publisher.confirmed(4);
        assert_eq!(
            publisher.next(&views, Some(ids[1]), None, None).map(|t| (t.epoch(), t.master)),
            Some((5, Some(ids[1])))
        );
    }

    #[test]
    fn a_worker_confirms_once_nothing_is_in_flight_to_the_master_it_let_go_of() {
        let (views, ids) = views(2);
        let mut publisher = Publisher::default();
        let mut following = Following::default();
        let first = publisher.next(&views, Some(ids[0]), None, None).expect("published");
        following.applied(&first, None);
        assert_eq!(following.confirm(3), 1, "no master was let go of");
        let away = publisher.next(&views, None, Some(ids[0]), None).expect("a switchover holds writes");
        following.applied(&away, Some(ids[0]));
        assert_eq!(following.letting_go(), Some(ids[0]));
        assert_eq!(following.confirm(2), 1, "two requests still in flight to the old master");
        assert_eq!(following.confirm(0), 2);
        assert_eq!(following.letting_go(), None);
    }
}
