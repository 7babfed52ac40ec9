//! `WAIT` answered by the proxy, truthfully.
//!
//! Redis counts the replicas that acknowledged the writes of the connection `WAIT` arrives on; through a proxy
//! that connection is shared (or was opened for the `WAIT`), so forwarding would count the wrong writes and would
//! block every client sharing it. Instead, once every earlier request of the client has been answered (so its
//! writes are in the master's replication stream), the proxy reads the master's replication offset with an
//! `INFO replication` sent after that moment, then counts the replicas whose own offset, read the same way, has
//! reached it: each of them has applied every write the client made. It polls until enough have, or the timeout.
//! The count can be lower than Redis's own (a replica's offset is read, not pushed), never higher. When some of
//! the client's writes since its last `WAIT` went to a master that has since been replaced (a failover), they may
//! have been lost with it, and no replica of the new master can vouch for them: that `WAIT` answers 0.
//!
//! In cluster mode a client's writes go to the primaries of their slots: its `WAIT` counts, for each primary it
//! wrote to, the replicas that reached that primary's offset, and answers the fewest (a primary the map no longer
//! shows leading its shard counts 0: it was failed over, and its writes may be lost with it).

use crate::cluster_writes::Written;
use crate::conn::ConnId;
use crate::offset_poll::PollSchedule;
use crate::server_id::ServerId;
use crate::topology::{ReplicationInfo, Role, ServerView, Views};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How often pending `WAIT`s re-read the offsets.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// One client's `WAIT`.
struct PendingWait {
    client: ConnId,
    /// Its reply slot.
    seq: u64,
    replicas: u64,
    /// Every earlier request of the client had been answered by then: offsets read from `INFO` sent since count.
    since: Instant,
    deadline: Option<Instant>,
    /// Some of the client's writes went to a master that has since been replaced: the answer is 0.
    void: bool,
    /// The master epoch it began in; a failover before it is answered makes it void too.
    epoch: u64,
    /// Cluster mode: the primaries whose replicas are counted (the master and epoch above do not apply).
    primaries: Option<Written>,
}

/// A `WAIT` that is answered: `reply` (`:count`) goes to reply slot `seq` of `client`.
pub(crate) struct WaitDone {
    pub(crate) client: ConnId,
    pub(crate) seq: u64,
    pub(crate) reply: Bytes,
}

/// The `WAIT`s in progress, and the master epoch their answers depend on.
#[derive(Default)]
pub(crate) struct Waits {
    pending: Vec<PendingWait>,
    schedule: PollSchedule,
    /// Bumped whenever the routed master or its replication history (`master_replid`) changes: a write
    /// acknowledged in an earlier epoch may have been lost (a demoted master resyncs and drops what it had).
    epoch: u64,
    /// The routed master of this epoch, with its `master_replid` as its last `INFO` said.
    epoch_master: Option<(ServerId, Option<String>)>,
}

impl Waits {
    /// The master epoch now (see [`Waits::follow_master`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a new master epoch when the routed `master`, or the history it serves, changed.
    pub(crate) fn follow_master(&mut self, views: &Views, master: Option<ServerId>) {
        let replid = |m: ServerId| views.get(m)?.info.as_ref()?.replid.as_deref();
        let current = master.map(|m| (m, replid(m)));
        let known = self.epoch_master.as_ref().map(|(m, h)| (*m, h.as_deref()));
        if current != known {
            self.epoch_master = current.map(|(m, h)| (m, h.map(str::to_string)));
            self.epoch += 1;
        }
    }

    /// Starts a `WAIT` for `replicas` replicas of `client`'s reply slot `seq`, in master `epoch`; a `void` one can
    /// only answer 0.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        now: Instant,
        client: ConnId,
        seq: u64,
        replicas: u64,
        timeout: Option<Duration>,
        void: bool,
        epoch: u64,
    ) {
        let deadline = timeout.map(|t| now + t);
        self.pending.push(PendingWait { client, seq, replicas, since: now, deadline, void, epoch, primaries: None });
    }

    /// Cluster mode: starts a `WAIT` for `replicas` replicas of each of `primaries`, for `client`'s reply slot
    /// `seq`.
    pub(crate) fn add_in_cluster(
        &mut self,
        now: Instant,
        client: ConnId,
        seq: u64,
        replicas: u64,
        timeout: Option<Duration>,
        primaries: Written,
    ) {
        let deadline = timeout.map(|t| now + t);
        let primaries = Some(primaries);
        self.pending.push(PendingWait {
            client,
            seq,
            replicas,
            since: now,
            deadline,
            void: false,
            epoch: 0,
            primaries,
        });
    }

    /// Whether the offsets should be read now (and the next poll is scheduled).
    pub(crate) fn poll_due(&mut self, now: Instant) -> bool {
        self.schedule.due(now, !self.pending.is_empty(), POLL_EVERY)
    }

    /// When a `WAIT` next needs attention: a poll or a timeout.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeouts = self.pending.iter().filter_map(|w| w.deadline);
        timeouts.chain(self.schedule.next()).min()
    }

    /// Answers every `WAIT` that has its replicas, or whose time is up, or whose client is gone (`alive` says);
    /// `master` is the routed master of master `epoch`; in cluster mode `leads` says which servers lead a shard.
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        views: &Views,
        (master, epoch): (Option<ServerId>, u64),
        leads: impl Fn(ServerId) -> bool,
        alive: impl Fn(ConnId) -> bool,
    ) -> Vec<WaitDone> {
        let mut done = Vec::new();
        self.pending.retain_mut(|wait| {
            if !alive(wait.client) {
                return false;
            }
            let (count, target_known) = match &wait.primaries {
                Some(primaries) => {
                    let leading = || primaries.iter().copied().filter(|p| leads(*p));
                    let count = if leading().count() < primaries.len() {
                        0
                    } else {
                        primaries.iter().map(|p| acknowledged(views, *p, wait.since)).min().unwrap_or(0)
                    };
                    let known = leading().all(|p| views.get(p).is_some_and(|v| target_offset(v, wait.since).is_some()));
                    (count, known)
                }
                None => {
                    // The client's writes went to the master of the epoch it began in, which another has since
                    // replaced.
                    wait.void |= wait.epoch != epoch;
                    let count = match master {
                        Some(m) if !wait.void => acknowledged(views, m, wait.since),
                        _ => 0,
                    };
                    let known = wait.void
                        || master.and_then(|m| views.get(m)).is_some_and(|v| target_offset(v, wait.since).is_some());
                    (count, known)
                }
            };
            let timed_out = wait.deadline.is_some_and(|at| now >= at);
            if (target_known && count >= wait.replicas) || timed_out {
                let reply = Bytes::from(format!(":{count}\r\n"));
                done.push(WaitDone { client: wait.client, seq: wait.seq, reply });
                return false;
            }
            true
        });
        done
    }
}

/// What `view` reported in an `INFO replication` sent at or after `since`.
fn fresh_info(view: &ServerView, since: Instant) -> Option<&ReplicationInfo> {
    view.offset_seen.as_ref().filter(|(sent_at, _)| *sent_at >= since).map(|(_, info)| info)
}

/// The master's offset, read since `since` from a server that still said it was a master.
fn target_offset(view: &ServerView, since: Instant) -> Option<i64> {
    fresh_info(view, since).filter(|info| info.role == Some(Role::Master)).map(|info| info.repl_offset)
}

/// Replicas of `master` that have applied everything the master had at `since` (0 while that is unknown): each
/// said, in the same fresh reply, that it replicates `master` over a link that is up, not in a sync, in the
/// master's replication history (the same `master_replid`: offsets of another history, such as a re-pointed
/// server's own before its resync, mean nothing), and how far it has processed that stream. A process reached under
/// two addresses counts once.
fn acknowledged(views: &Views, master: ServerId, since: Instant) -> u64 {
    let Some(master_view) = views.get(master) else { return 0 };
    let Some(target) = target_offset(master_view, since) else { return 0 };
    let history = fresh_info(master_view, since).and_then(|info| info.replid.as_deref());
    // The history the engine's epoch follows (from the probe's INFO) must still be the master's: a master demoted,
    // resynced and promoted again between two probes has a new one, and may have dropped the client's writes.
    let probed_history = master_view.info.as_ref().and_then(|info| info.replid.as_deref());
    if history != probed_history {
        return 0;
    }
    let master_address = &master_view.address;
    let applied = |view: &ServerView| {
        fresh_info(view, since).is_some_and(|info| {
            let follows = info.master.as_ref().is_some_and(|(host, port)| master_address.is_named(host, *port));
            let same_history = history.is_some() && info.replid.as_deref() == history;
            info.role == Some(Role::Replica)
                && follows
                && info.link_up
                && !info.sync_in_progress
                && same_history
                && info.repl_offset >= target
        })
    };
    // One process under two addresses (a server re-addressed by a reload while the old address drains) is one
    // replica: counted once by the run id its probe reported.
    let mut counted: Vec<Option<&str>> = Vec::new();
    for (_, view) in views.iter().filter(|(id, v)| *id != master && applied(v)) {
        let run_id = view.info.as_ref().and_then(|info| info.run_id.as_deref());
        if run_id.is_none() || !counted.contains(&run_id) {
            counted.push(run_id);
        }
    }
    counted.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ServerAddress;

    /// A server whose probe's `INFO` says it serves (or follows) history "h".
    fn view(port: u16, now: Instant) -> ServerView {
        let mut view = ServerView::new(ServerAddress { host: "127.0.0.1".into(), port }, now);
        view.info = Some(ReplicationInfo { replid: Some("h".to_string()), ..Default::default() });
        view
    }

    /// What an `INFO replication` sent at `at` said: a master (`of` None) or a replica of port `of`, synced, in
    /// history "h".
    fn reading(at: Instant, of: Option<u16>, offset: i64) -> Option<(Instant, ReplicationInfo)> {
        let role = if of.is_some() { Role::Replica } else { Role::Master };
        let master = of.map(|port| ("127.0.0.1".to_string(), port));
        let (link_up, replid) = (of.is_some(), Some("h".to_string()));
        Some((
            at,
            ReplicationInfo { role: Some(role), master, link_up, replid, repl_offset: offset, ..Default::default() },
        ))
    }

    fn client() -> ConnId {
        crate::conn::ConnTable::new(crate::conn::Lane::Client).insert(())
    }

    #[test]
    fn counts_only_replicas_that_reached_a_fresh_master_offset() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0), view(3, t0)]);
        let mut waits = Waits::default();
        let since = t0 + Duration::from_millis(5);
        waits.add(since, client(), 7, 2, Some(Duration::from_millis(100)), false, 0);
        // Offsets read before the WAIT began do not count, however high.
        views[0].offset_seen = reading(t0, None, 100);
        views[1].offset_seen = reading(t0, Some(1), 500);
        assert!(waits.settle(since, &views, (Some(ServerId::first(0)), 0), |_| false, |_| true).is_empty());
        let later = since + Duration::from_millis(1);
        views[0].offset_seen = reading(later, None, 120);
        views[1].offset_seen = reading(later, Some(1), 120);
        views[2].offset_seen = reading(later, Some(1), 119);
        assert!(
            waits.settle(later, &views, (Some(ServerId::first(0)), 0), |_| false, |_| true).is_empty(),
            "one replica is behind"
        );
        let done = waits.settle(
            since + Duration::from_millis(100),
            &views,
            (Some(ServerId::first(0)), 0),
            |_| false,
            |_| true,
        );
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].seq, &done[0].reply[..]), (7, &b":1\r\n"[..]), "at the timeout: the one that applied it");
    }

    /// Found by the simulation: a replica promoted by another proxy has a high offset of its own history.
    #[test]
    fn a_server_that_no_longer_replicates_the_master_is_not_counted() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0), view(3, t0)]);
        let mut waits = Waits::default();
        waits.add(t0, client(), 1, 1, Some(Duration::from_millis(50)), false, 0);
        views[0].offset_seen = reading(t0, None, 100);
        views[1].offset_seen = reading(t0, None, 900);
        views[2].offset_seen = reading(t0, Some(2), 900);
        assert!(waits.settle(t0, &views, (Some(ServerId::first(0)), 0), |_| false, |_| true).is_empty());
        let done =
            waits.settle(t0 + Duration::from_millis(50), &views, (Some(ServerId::first(0)), 0), |_| false, |_| true);
        assert_eq!(&done[0].reply[..], b":0\r\n");
    }

    /// Found by the simulation: a server just re-pointed at the master still reports its own history's offset.
    #[test]
    fn a_replica_not_yet_synced_into_the_masters_history_is_not_counted() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0), view(3, t0)]);
        views[0].offset_seen = reading(t0, None, 100);
        views[1].offset_seen = reading(t0, Some(1), 500);
        views[2].offset_seen = reading(t0, Some(1), 500);
        if let Some((_, info)) = views[1].offset_seen.as_mut() {
            info.replid = Some("its own".to_string());
        }
        if let Some((_, info)) = views[2].offset_seen.as_mut() {
            info.link_up = false;
        }
        let mut waits = Waits::default();
        waits.add(t0, client(), 1, 1, Some(Duration::from_millis(50)), false, 0);
        let done =
            waits.settle(t0 + Duration::from_millis(50), &views, (Some(ServerId::first(0)), 0), |_| false, |_| true);
        assert_eq!(&done[0].reply[..], b":0\r\n");
    }

    #[test]
    fn a_failover_during_a_wait_makes_it_answer_zero() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0)]);
        views[0].offset_seen = reading(t0, Some(2), 10);
        views[1].offset_seen = reading(t0, None, 10);
        let mut waits = Waits::default();
        waits.add(t0, client(), 1, 1, Some(Duration::from_millis(50)), false, 0);
        // Server 1 is the master of epoch 1; server 0, its synced replica, may have lost the client's writes.
        let later = t0 + Duration::from_millis(50);
        let done = waits.settle(later, &views, (Some(ServerId::first(1)), 1), |_| false, |_| true);
        assert_eq!(&done[0].reply[..], b":0\r\n");
    }

    #[test]
    fn a_void_wait_answers_zero_whatever_the_replicas_have() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0)]);
        views[0].offset_seen = reading(t0, None, 10);
        views[1].offset_seen = reading(t0, Some(1), 10);
        let mut waits = Waits::default();
        waits.add(t0, client(), 1, 1, Some(Duration::from_millis(50)), true, 0);
        assert!(
            waits.settle(t0, &views, (Some(ServerId::first(0)), 0), |_| false, |_| true).is_empty(),
            "it waits for its timeout"
        );
        let done =
            waits.settle(t0 + Duration::from_millis(50), &views, (Some(ServerId::first(0)), 0), |_| false, |_| true);
        assert_eq!(&done[0].reply[..], b":0\r\n");
    }

    #[test]
    fn a_new_epoch_begins_when_the_master_or_its_history_changes() {
        let t0 = Instant::now();
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0)]);
        let history = |id: &str| {
            Some(ReplicationInfo { role: Some(Role::Master), replid: Some(id.into()), ..Default::default() })
        };
        views[0].info = history("a");
        let mut waits = Waits::default();
        let (first, second) = (ServerId::first(0), ServerId::first(1));
        waits.follow_master(&views, Some(first));
        let epoch = waits.epoch();
        waits.follow_master(&views, Some(first));
        assert_eq!(waits.epoch(), epoch, "nothing changed");
        views[0].info = history("b");
        waits.follow_master(&views, Some(first));
        assert_eq!(waits.epoch(), epoch + 1, "a new history (it resynced)");
        waits.follow_master(&views, Some(second));
        assert_eq!(waits.epoch(), epoch + 2, "another master");
        waits.follow_master(&views, None);
        assert_eq!(waits.epoch(), epoch + 3, "no master");
    }

    #[test]
    fn in_a_cluster_the_fewest_replicas_of_the_primaries_written_to_is_the_answer() {
        let t0 = Instant::now();
        // Primaries on ports 1 and 3, each with its replica on 2 and 4.
        let mut views: Views = Views::from_iter([view(1, t0), view(2, t0), view(3, t0), view(4, t0)]);
        let (first, second) = (ServerId::first(0), ServerId::first(2));
        let mut waits = Waits::default();
        let written: Written = [first, second].into_iter().collect();
        waits.add_in_cluster(t0, client(), 3, 1, Some(Duration::from_millis(100)), written.clone());
        let later = t0 + Duration::from_millis(1);
        views[0].offset_seen = reading(later, None, 100);
        views[1].offset_seen = reading(later, Some(1), 100);
        views[2].offset_seen = reading(later, None, 50);
        views[3].offset_seen = reading(later, Some(3), 40);
        let leads = |s: ServerId| s == first || s == second;
        let settle = |waits: &mut Waits, at, views: &Views, leads: &dyn Fn(ServerId) -> bool| {
            waits.settle(at, views, (None, 0), leads, |_| true)
        };
        assert!(settle(&mut waits, later, &views, &leads).is_empty(), "the second primary's replica is behind");
        views[3].offset_seen = reading(later, Some(3), 50);
        let done = settle(&mut waits, later, &views, &leads);
        assert_eq!((done.len(), &done[0].reply[..]), (1, &b":1\r\n"[..]));
        // A primary written to that the map no longer shows leading: its writes may be lost, it counts 0.
        waits.add_in_cluster(later, client(), 4, 1, Some(Duration::from_millis(100)), written);
        let only_first = |s: ServerId| s == first;
        let again = later + Duration::from_millis(1);
        views[0].offset_seen = reading(again, None, 100);
        views[1].offset_seen = reading(again, Some(1), 100);
        assert!(settle(&mut waits, again, &views, &only_first).is_empty(), "it waits for its timeout");
        let done = settle(&mut waits, later + Duration::from_millis(100), &views, &only_first);
        assert_eq!((done.len(), &done[0].reply[..]), (1, &b":0\r\n"[..]));
    }
}
