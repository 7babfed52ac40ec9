//! Read-your-writes in `readsToSlaves`: after a client's write, its reads go to the master until a replica has
//! applied that write, known from replication offsets (never from a timer).
//!
//! The proof is the one `WAIT` uses (see `wait`): once the reply to the client's write has reached the proxy, the
//! master's replication offset read with an `INFO replication` asked for after that moment is at least the
//! offset of the write; a replica whose own offset has reached that number has applied it. Offset requests carry
//! a serial number issued in the engine's processing order, so "asked for after the reply arrived" never depends
//! on how coarse the runtime's clock is.
//!
//! Per client, a [`ReadFence`] remembers the newest write still unanswered, then the serial its master offset must
//! come from, then that offset. Engine-wide, [`FencePoll`] keeps the offsets fresh while any fence may still be
//! waiting for them.

use crate::offset_poll::PollSchedule;
use crate::server_id::ServerId;
#[cfg(test)]
use crate::topology::ServerView;
use crate::topology::Views;
use std::time::{Duration, Instant};

/// How often the offsets are re-read while a fence waits for them. Replication on a LAN takes well under a
/// millisecond; a faster poll lets reads return to the replicas sooner, at the price of more `INFO` calls.
const POLL_EVERY: Duration = Duration::from_millis(2);

/// How long after the last write's reply the offsets are polled at most. A replica that has not caught up by
/// then is lagging; fences on it clear when the periodic probe's `INFO` shows it caught up.
const POLL_FOR: Duration = Duration::from_secs(1);

/// Where a client's reads may go, given its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadFloor {
    /// Any readable replica.
    Any,
    /// Only a replica whose replication offset has reached this.
    Offset(i64),
    /// Only the master: a write's offset is not known yet.
    Master,
}

/// One client's newest write and how far its replication is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadFence {
    /// The reply slot of the newest write whose reply has not arrived.
    unanswered: Option<u64>,
    /// The newest answered write is covered by a master offset read by an offset request with this serial or a
    /// later one.
    needs_serial: Option<u64>,
    /// A replica at this offset has applied every write of the client so far.
    offset: Option<i64>,
}

impl ReadFence {
    /// A write went out in reply slot `seq`.
    pub(crate) fn write_sent(&mut self, seq: u64) {
        self.unanswered = Some(seq);
        // A newer write supersedes the older one's pending proof.
        self.needs_serial = None;
    }

    /// The reply for slot `seq` arrived while the next offset request will carry `next_serial`; returns whether
    /// it answered the newest write (then the offsets must be read).
    pub(crate) fn replied(&mut self, seq: u64, next_serial: u64) -> bool {
        if self.unanswered != Some(seq) {
            return false;
        }
        self.unanswered = None;
        self.needs_serial = Some(next_serial);
        true
    }

    /// Where the client's reads may go; `master_offset` is the master's newest offset reading with the serial of
    /// its request. A reading that proves the newest write's offset is kept: later readings are higher only
    /// because of other clients' writes.
    pub(crate) fn floor(&mut self, master_offset: Option<(u64, i64)>) -> ReadFloor {
        if self.unanswered.is_some() {
            return ReadFloor::Master;
        }
        if let Some(serial) = self.needs_serial {
            match master_offset {
                Some((read_serial, offset)) if read_serial >= serial => {
                    self.needs_serial = None;
                    self.offset = Some(offset);
                }
                _ => return ReadFloor::Master,
            }
        }
        self.offset.map_or(ReadFloor::Any, ReadFloor::Offset)
    }
}

/// The offset polling that fences wait for.
#[derive(Debug, Default)]
pub(crate) struct FencePoll {
    /// The serial the master's offset must come from to cover every write answered so far.
    needs_serial: Option<u64>,
    /// Poll until then (the last write's reply + [`POLL_FOR`]).
    until: Option<Instant>,
    schedule: PollSchedule,
}

impl FencePoll {
    /// A write's reply arrived at `now` while the next offset request will carry `next_serial`.
    pub(crate) fn demand(&mut self, now: Instant, next_serial: u64) {
        self.needs_serial = Some(next_serial);
        self.until = Some(now + POLL_FOR);
    }

    /// Whether the offsets should be read now (the next poll is then scheduled): while the newest answered write
    /// is not known to have reached every replica of `master` that answers probes, for at most [`POLL_FOR`].
    pub(crate) fn poll_due(&mut self, now: Instant, views: &Views, master: Option<ServerId>) -> bool {
        let active = self.until.is_some_and(|until| now < until) && !self.settled(views, master);
        if !active {
            self.needs_serial = None;
            self.until = None;
        }
        self.schedule.due(now, active, POLL_EVERY)
    }

    /// When the next poll is due, while polling.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        // Polling ends at `until`; the poll at or after it notices and stops.
        self.schedule.next()
    }

    /// Whether the master's offset covering the newest answered write is known and every routable replica of it
    /// has reached that offset.
    fn settled(&self, views: &Views, master: Option<ServerId>) -> bool {
        let Some(view) = master.and_then(|m| views.get(m)) else { return false };
        let Some(needs) = self.needs_serial else { return true };
        let Some((_, reading)) = view.offset_seen.as_ref().filter(|_| view.offset_serial >= needs) else {
            return false;
        };
        let history = reading.replid.as_deref();
        views
            .values()
            .filter(|v| v.replicates(&view.address) && v.is_routable())
            .all(|v| v.has_applied(history, reading.repl_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ServerAddress;
    use crate::topology::{ReplicationInfo, Role};

    /// A master and one replica, each with an offset reading of `offsets` in one history, the master's read by
    /// offset request `serial`.
    fn views(now: Instant, serial: u64, offsets: [i64; 2]) -> Views {
        let info = |role, offset| ReplicationInfo {
            role: Some(role),
            master: (role == Role::Replica).then(|| ("127.0.0.1".to_string(), 1)),
            link_up: true,
            repl_offset: offset,
            replid: Some("history".into()),
            ..Default::default()
        };
        let mut views: Views = [(1, Role::Master), (2, Role::Replica)]
            .into_iter()
            .zip(offsets)
            .map(|((port, role), offset)| {
                let mut view = ServerView::new(ServerAddress { host: "127.0.0.1".into(), port }, now);
                view.info = Some(info(role, 0));
                view.info_at = Some(now);
                view.offset_seen = Some((now, info(role, offset)));
                view
            })
            .collect();
        views[0].offset_serial = serial;
        views
    }

    #[test]
    fn offsets_are_polled_until_every_replica_has_the_last_write() {
        let t0 = Instant::now();
        let mut poll = FencePoll::default();
        assert!(!poll.poll_due(t0, &views(t0, 0, [0, 0]), Some(ServerId::first(0))), "nothing to wait for");
        poll.demand(t0, 5);
        assert!(poll.poll_due(t0, &views(t0, 4, [100, 100]), Some(ServerId::first(0))), "the master's proof is older");
        let soon = t0 + Duration::from_millis(1);
        assert!(!poll.poll_due(soon, &views(soon, 4, [100, 100]), Some(ServerId::first(0))), "not again within 2 ms");
        let later = t0 + POLL_EVERY;
        assert!(poll.poll_due(later, &views(later, 5, [120, 110]), Some(ServerId::first(0))), "the replica is behind");
        let settled = later + POLL_EVERY;
        assert!(!poll.poll_due(settled, &views(settled, 5, [120, 120]), Some(ServerId::first(0))));
        assert_eq!(poll.deadline(), None, "settled: polling stops");
        poll.demand(settled, 6);
        let expired = settled + POLL_FOR;
        assert!(!poll.poll_due(expired, &views(expired, 0, [0, 0]), Some(ServerId::first(0))), "bounded in time");
    }

    #[test]
    fn a_fence_holds_reads_on_the_master_until_the_write_offset_is_known() {
        let mut fence = ReadFence::default();
        assert_eq!(fence.floor(None), ReadFloor::Any);
        fence.write_sent(4);
        assert_eq!(fence.floor(Some((9, 100))), ReadFloor::Master, "the write is unanswered");
        assert!(!fence.replied(3, 10), "an earlier request's reply");
        assert!(fence.replied(4, 10));
        assert_eq!(fence.floor(Some((9, 100))), ReadFloor::Master, "read before the reply arrived: no proof");
        assert_eq!(fence.floor(Some((10, 120))), ReadFloor::Offset(120));
        assert_eq!(fence.floor(Some((11, 500))), ReadFloor::Offset(120), "other clients' writes do not raise it");
        fence.write_sent(7);
        fence.write_sent(8);
        assert!(!fence.replied(7, 12), "only the newest write matters");
        assert!(fence.replied(8, 12));
        assert_eq!(fence.floor(Some((12, 130))), ReadFloor::Offset(130));
    }
}
