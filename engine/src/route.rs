//! Where a request goes: the routed master, or (in `readsToSlaves`) a healthy replica chosen round robin; nowhere
//! (hold it) while no master is routable.

use crate::command::{CommandFlags, CommandSpec};
use crate::config::{Config, Mode};
use crate::topology::{ServerId, ServerView};
use std::time::{Duration, Instant};

/// What makes a replica fit to serve reads.
#[derive(Clone, Copy, Debug)]
struct ReadPolicy {
    /// The time now.
    now: Instant,
    /// A replica whose `master_last_io_seconds_ago` exceeds this gets no reads.
    max_lag: Duration,
    /// A replica whose probe has gone unanswered this long gets no reads (it may be hung).
    probe_late_after: Duration,
}

/// Whether `view` may serve reads for `master`: routable, answering probes, linked to it, not syncing, not lagging.
fn is_readable_replica(view: &ServerView, master: &ServerView, policy: &ReadPolicy) -> bool {
    let Some(info) = view.info.as_ref() else { return false };
    let max_lag = policy.max_lag;
    let probe_late = view
        .probe_pending_since
        .is_some_and(|since| policy.now.saturating_duration_since(since) > policy.probe_late_after);
    view.is_routable()
        && !probe_late
        && view.replicates(&master.address)
        && info.link_up
        && !info.sync_in_progress
        && info.last_io_secs.is_none_or(|s| s >= 0 && Duration::from_secs(s as u64) <= max_lag)
}

/// The next replica for a read, round robin from `cursor` (which is advanced), or None when no replica is usable.
fn read_replica(views: &[ServerView], master: ServerId, cursor: &mut usize, policy: &ReadPolicy) -> Option<ServerId> {
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

/// The routing decision and its round-robin position.
pub(crate) struct Router {
    reads_to_replicas: bool,
    max_lag: Duration,
    probe_late_after: Duration,
    cursor: usize,
}

impl Router {
    /// Routing as `config` says.
    pub(crate) fn new(config: &Config) -> Router {
        Router {
            reads_to_replicas: config.mode == Mode::ReadsToSlaves,
            max_lag: config.replica_max_lag,
            probe_late_after: config.check_period / 2,
            cursor: 0,
        }
    }

    /// The server a forwarded request for `spec` goes to, or None when it must wait for a master. `private` says
    /// it goes on the client's private connection (always to the master); `master` is the routed master.
    pub(crate) fn route(
        &mut self,
        now: Instant,
        spec: Option<&'static CommandSpec>,
        private: bool,
        views: &[ServerView],
        master: Option<ServerId>,
    ) -> Option<ServerId> {
        let routed = master?;
        if !private && self.reads_to_replicas {
            let read_only = spec
                .is_some_and(|s| s.flags.contains(CommandFlags::READONLY) && !s.flags.contains(CommandFlags::WRITE));
            if read_only {
                let policy = ReadPolicy { now, max_lag: self.max_lag, probe_late_after: self.probe_late_after };
                if let Some(replica) = read_replica(views, routed, &mut self.cursor, &policy) {
                    return Some(replica);
                }
            }
        }
        // A master whose connections just failed gets nothing until a probe hears from it again: requests wait
        // (for it, or for a failover) instead of failing one by one.
        views[routed.0].is_routable().then_some(routed)
    }
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
