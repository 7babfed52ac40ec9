//! Where a request goes: the master, or (in `readsToSlaves`) a healthy replica chosen round robin.

use crate::topology::{ServerId, ServerView};
use std::time::{Duration, Instant};

/// What makes a replica fit to serve reads.
#[derive(Clone, Copy, Debug)]
pub struct ReadPolicy {
    /// The time now.
    pub now: Instant,
    /// A replica whose `master_last_io_seconds_ago` exceeds this gets no reads.
    pub max_lag: Duration,
    /// A replica whose probe has gone unanswered this long gets no reads (it may be hung).
    pub probe_late_after: Duration,
}

/// Whether `view` may serve reads for `master`: up, answering probes, linked to it, not syncing, not lagging.
pub fn is_readable_replica(view: &ServerView, master: &ServerView, policy: &ReadPolicy) -> bool {
    let Some(info) = view.info.as_ref() else { return false };
    let max_lag = policy.max_lag;
    let probe_late = view
        .probe_pending_since
        .is_some_and(|since| policy.now.saturating_duration_since(since) > policy.probe_late_after);
    !view.suspect
        && !probe_late
        && view.replicates(&master.address)
        && info.link_up
        && !info.sync_in_progress
        && info.last_io_secs.is_none_or(|s| s >= 0 && Duration::from_secs(s as u64) <= max_lag)
}

/// The next replica for a read, round robin from `cursor` (which is advanced), or None when no replica is usable.
pub fn read_replica(
    views: &[ServerView],
    master: ServerId,
    cursor: &mut usize,
    policy: &ReadPolicy,
) -> Option<ServerId> {
    let count = views.len();
    for step in 0..count {
        let index = (*cursor + step) % count;
        if index != master.0 && is_readable_replica(&views[index], &views[master.0], policy) {
            *cursor = index + 1;
            return Some(ServerId(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddress;
    use crate::topology::{ReplicationInfo, Role};
    use std::time::Instant;

    fn view(port: u16, info: ReplicationInfo) -> ServerView {
        let now = Instant::now();
        let mut v = ServerView::new(ServerAddress { host: "127.0.0.1".into(), port }, now);
        v.info = Some(info);
        v
    }

    #[test]
    fn round_robin_skips_unlinked_and_lagging() {
        let replica = |link_up, lag| ReplicationInfo {
            role: Some(Role::Replica),
            master: Some(("127.0.0.1".into(), 1)),
            link_up,
            last_io_secs: Some(lag),
            ..Default::default()
        };
        let views = vec![
            view(1, ReplicationInfo { role: Some(Role::Master), ..Default::default() }),
            view(2, replica(true, 0)),
            view(3, replica(false, 0)),
            view(4, replica(true, 100)),
            view(5, replica(true, 1)),
        ];
        let mut cursor = 0;
        let policy = ReadPolicy {
            now: Instant::now(),
            max_lag: Duration::from_secs(10),
            probe_late_after: Duration::from_secs(1),
        };
        let picks: Vec<usize> =
            (0..4).map(|_| read_replica(&views, ServerId(0), &mut cursor, &policy).unwrap().0).collect();
        assert_eq!(picks, vec![1, 4, 1, 4]);
    }
}
