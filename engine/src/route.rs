//! Where a request goes: the master, or (in `readsToSlaves`) a healthy replica chosen round robin.

use crate::topology::{ServerId, ServerView};
use std::time::Duration;

/// Whether `view` may serve reads for `master`: up, linked to it, not loading or syncing, not lagging.
pub fn is_readable_replica(view: &ServerView, master: &ServerView, max_lag: Duration) -> bool {
    let Some(info) = view.info.as_ref() else { return false };
    !view.suspect
        && view.replicates(&master.address)
        && info.link_up
        && !info.sync_in_progress
        && info.last_io_secs.is_none_or(|s| s >= 0 && Duration::from_secs(s as u64) <= max_lag)
}

/// The next replica for a read, round robin from `cursor` (which is advanced), or None when no replica is usable.
pub fn read_replica(views: &[ServerView], master: ServerId, cursor: &mut usize, max_lag: Duration) -> Option<ServerId> {
    let count = views.len();
    for step in 0..count {
        let index = (*cursor + step) % count;
        if index != master.0 && is_readable_replica(&views[index], &views[master.0], max_lag) {
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
        let lag = Duration::from_secs(10);
        let picks: Vec<usize> =
            (0..4).map(|_| read_replica(&views, ServerId(0), &mut cursor, lag).unwrap().0).collect();
        assert_eq!(picks, vec![1, 4, 1, 4]);
    }
}
