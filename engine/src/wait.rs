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

use crate::conn::ConnId;
use crate::topology::{ServerId, ServerView};
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
}

/// A `WAIT` that is answered: `reply` (`:count`) goes to reply slot `seq` of `client`.
pub(crate) struct WaitDone {
    pub(crate) client: ConnId,
    pub(crate) seq: u64,
    pub(crate) reply: Bytes,
}

/// The `WAIT`s in progress.
#[derive(Default)]
pub(crate) struct Waits {
    pending: Vec<PendingWait>,
    next_poll: Option<Instant>,
}

impl Waits {
    /// Starts a `WAIT` for `replicas` replicas of `client`'s reply slot `seq`; a `void` one can only answer 0.
    pub(crate) fn add(
        &mut self,
        now: Instant,
        client: ConnId,
        seq: u64,
        replicas: u64,
        timeout: Option<Duration>,
        void: bool,
    ) {
        let deadline = timeout.map(|t| now + t);
        self.pending.push(PendingWait { client, seq, replicas, since: now, deadline, void });
    }

    /// Whether the offsets should be read now (and the next poll is scheduled).
    pub(crate) fn poll_due(&mut self, now: Instant) -> bool {
        if self.pending.is_empty() {
            self.next_poll = None;
            return false;
        }
        if self.next_poll.is_some_and(|at| now < at) {
            return false;
        }
        self.next_poll = Some(now + POLL_EVERY);
        true
    }

    /// When a `WAIT` next needs attention: a poll or a timeout.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeouts = self.pending.iter().filter_map(|w| w.deadline);
        timeouts.chain(self.next_poll).min()
    }

    /// Answers every `WAIT` that has its replicas, or whose time is up, or whose client is gone (`alive` says).
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        views: &[ServerView],
        master: Option<ServerId>,
        alive: impl Fn(ConnId) -> bool,
    ) -> Vec<WaitDone> {
        let mut done = Vec::new();
        self.pending.retain(|wait| {
            if !alive(wait.client) {
                return false;
            }
            let count = match master {
                Some(m) if !wait.void => acknowledged(views, m, wait.since),
                _ => 0,
            };
            let timed_out = wait.deadline.is_some_and(|at| now >= at);
            let target_known = wait.void || master.is_some_and(|m| fresh_offset(&views[m.0], wait.since).is_some());
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

/// The offset `view` reported in an `INFO replication` sent at or after `since`.
fn fresh_offset(view: &ServerView, since: Instant) -> Option<i64> {
    view.offset_seen.filter(|(sent_at, _)| *sent_at >= since).map(|(_, offset)| offset)
}

/// Replicas of `master` that have applied everything the master had at `since` (0 while that is unknown).
fn acknowledged(views: &[ServerView], master: ServerId, since: Instant) -> u64 {
    let Some(target) = fresh_offset(&views[master.0], since) else { return 0 };
    let master_address = &views[master.0].address;
    let applied = |view: &ServerView| {
        view.replicates(master_address) && fresh_offset(view, since).is_some_and(|offset| offset >= target)
    };
    views.iter().enumerate().filter(|(i, v)| *i != master.0 && applied(v)).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddress;
    use crate::topology::{ReplicationInfo, Role};

    fn view(port: u16, role: Role, now: Instant) -> ServerView {
        let mut view = ServerView::new(ServerAddress { host: "127.0.0.1".into(), port }, now);
        view.info = Some(ReplicationInfo {
            role: Some(role),
            master: (role == Role::Replica).then(|| ("127.0.0.1".to_string(), 1)),
            link_up: true,
            ..Default::default()
        });
        view
    }

    #[test]
    fn counts_only_replicas_that_reached_a_fresh_master_offset() {
        let t0 = Instant::now();
        let client = crate::conn::ConnTable::new(crate::conn::Lane::Client).insert(());
        let mut views = vec![view(1, Role::Master, t0), view(2, Role::Replica, t0), view(3, Role::Replica, t0)];
        let mut waits = Waits::default();
        let since = t0 + Duration::from_millis(5);
        waits.add(since, client, 7, 2, Some(Duration::from_millis(100)), false);
        // Offsets read before the WAIT began do not count, however high.
        views[0].offset_seen = Some((t0, 100));
        views[1].offset_seen = Some((t0, 500));
        assert!(waits.settle(since, &views, Some(ServerId(0)), |_| true).is_empty());
        let later = since + Duration::from_millis(1);
        views[0].offset_seen = Some((later, 120));
        views[1].offset_seen = Some((later, 120));
        views[2].offset_seen = Some((later, 119));
        assert!(waits.settle(later, &views, Some(ServerId(0)), |_| true).is_empty(), "one replica is behind");
        let done = waits.settle(since + Duration::from_millis(100), &views, Some(ServerId(0)), |_| true);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].seq, &done[0].reply[..]), (7, &b":1\r\n"[..]), "at the timeout: the one that applied it");
    }

    #[test]
    fn a_void_wait_answers_zero_whatever_the_replicas_have() {
        let t0 = Instant::now();
        let client = crate::conn::ConnTable::new(crate::conn::Lane::Client).insert(());
        let mut views = vec![view(1, Role::Master, t0), view(2, Role::Replica, t0)];
        for v in &mut views {
            v.offset_seen = Some((t0, 10));
        }
        let mut waits = Waits::default();
        waits.add(t0, client, 1, 1, Some(Duration::from_millis(50)), true);
        assert!(waits.settle(t0, &views, Some(ServerId(0)), |_| true).is_empty(), "it waits for its timeout");
        let done = waits.settle(t0 + Duration::from_millis(50), &views, Some(ServerId(0)), |_| true);
        assert_eq!(&done[0].reply[..], b":0\r\n");
    }
}
