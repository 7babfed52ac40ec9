//! A planned switchover in cluster mode (`PROXY FAILOVER host:port`): the proxy asks that replica to take over
//! its primary's slots with `CLUSTER FAILOVER`, and answers the admin once a map it accepted shows the replica as a
//! primary. Redis carries out a manual failover without losing an acknowledged write: the primary stops its
//! clients until the replica has caught up, and only then does the replica take over. The proxy never starts one
//! on its own.

use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::server_id::ServerId;
use crate::slot_map::SlotMap;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How long the admin waits for the replica to show as a primary. Redis gives a manual failover 5 s to catch up
/// and the election that follows takes about a node timeout; past this the admin gets an error that says the
/// cluster may still promote it.
pub(crate) const SWITCHOVER_WAIT: Duration = Duration::from_secs(15);

/// `CLUSTER FAILOVER`, sent to the replica.
pub(crate) const CLUSTER_FAILOVER: &[u8] = b"*2\r\n$7\r\nCLUSTER\r\n$8\r\nFAILOVER\r\n";

/// Where a switchover stands after something happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Not over yet.
    Waiting,
    /// Over: what the admin is told (`Ok`: the text after `+OK`; `Err`: the error's message).
    Done(Result<String, String>),
}

/// A switchover under way.
#[derive(Clone, Debug)]
pub(crate) struct Switchover {
    /// The replica asked to take over.
    pub(crate) replica: ServerId,
    /// The primary it replicates.
    pub(crate) primary: ServerId,
    address: ServerAddress,
    /// The admin client and its reply slot.
    pub(crate) requester: (ConnId, u64),
    since: Instant,
    /// Whether the replica accepted `CLUSTER FAILOVER` (`+OK`).
    accepted: bool,
}

impl Switchover {
    /// Starts one for `replica` at `address`, which `map` must show as a replica, for the admin `requester`
    /// (connection and reply slot); the error says why it cannot start.
    pub(crate) fn begin(
        map: &SlotMap,
        replica: ServerId,
        address: ServerAddress,
        requester: (ConnId, u64),
        now: Instant,
    ) -> Result<Switchover, String> {
        if map.shards().iter().any(|s| s.primary == replica) {
            return Err(format!("{address} is a primary already"));
        }
        let Some(shard) = map.shards().iter().find(|s| s.replicas.contains(&replica)) else {
            return Err(format!("{address} is not a replica in the cluster's slot map"));
        };
        Ok(Switchover { replica, primary: shard.primary, address, requester, since: now, accepted: false })
    }

    /// The request to send to the replica.
    pub(crate) fn request() -> Bytes {
        Bytes::from_static(CLUSTER_FAILOVER)
    }

    /// The replica's reply to `CLUSTER FAILOVER`: `+OK` means it started (the map will show the outcome); an
    /// error ends the switchover with it.
    pub(crate) fn answered(&mut self, frame: &[u8]) -> Progress {
        if frame.first() == Some(&b'+') {
            self.accepted = true;
            return Progress::Waiting;
        }
        let text = String::from_utf8_lossy(frame.get(1..).unwrap_or_default()).trim_end().to_string();
        Progress::Done(Err(format!("{} refused CLUSTER FAILOVER: {text}", self.address)))
    }

    /// Whether the replica accepted `CLUSTER FAILOVER`: until a map shows the outcome, the map is read often.
    pub(crate) fn is_accepted(&self) -> bool {
        self.accepted
    }

    /// The connection to the replica broke before it answered.
    pub(crate) fn lost(&self) -> Progress {
        Progress::Done(Err(format!("the connection to {} broke before it answered CLUSTER FAILOVER", self.address)))
    }

    /// A map was accepted: done when it shows the replica leading a shard.
    pub(crate) fn map_accepted(&self, map: &SlotMap) -> Progress {
        let Some(index) = map.shards().iter().position(|s| s.primary == self.replica) else {
            return Progress::Waiting;
        };
        let slots = map.slots_per_shard().get(index).copied().unwrap_or(0);
        Progress::Done(Ok(format!("done: {} is the primary of {slots} slots now", self.address)))
    }

    /// When it gives up.
    pub(crate) fn deadline(&self) -> Instant {
        self.since + SWITCHOVER_WAIT
    }

    /// At `now`, past the deadline: the error the admin gets.
    pub(crate) fn expired(&self, now: Instant) -> Progress {
        if now < self.deadline() {
            return Progress::Waiting;
        }
        let what = if self.accepted {
            "accepted CLUSTER FAILOVER but no map shows it as a primary yet; the cluster may still promote it"
        } else {
            "did not answer CLUSTER FAILOVER"
        };
        Progress::Done(Err(format!("{} {what} (waited {} s)", self.address, SWITCHOVER_WAIT.as_secs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_nodes::parse_nodes;
    use crate::conn::{ConnTable, Lane};
    use crate::server_id::ServerTable;

    const NODES: &str = "\
a 127.0.0.1:7000@1 myself,master - 0 0 1 connected 0-16383
b 127.0.0.1:7001@1 slave a 0 0 1 connected
";

    const PROMOTED: &str = "\
a 127.0.0.1:7000@1 slave b 0 0 2 connected
b 127.0.0.1:7001@1 myself,master - 0 0 2 connected 0-16383
";

    fn address(port: u16) -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port }
    }

    /// Ids for ports 7000..7003, in order.
    fn ids() -> Vec<ServerId> {
        let mut table = ServerTable::default();
        (0..3)
            .map(|p| {
                let id = table.vacant_id();
                table.insert(id, p);
                id
            })
            .collect()
    }

    fn map(text: &str, ids: &[ServerId]) -> SlotMap {
        let nodes = parse_nodes(text.as_bytes(), &address(7000)).expect("parses");
        SlotMap::from_nodes(&nodes, |a| ids.get(usize::from(a.port - 7000)).copied())
    }

    fn admin() -> (ConnId, u64) {
        (ConnTable::new(Lane::Client).insert(()), 1)
    }

    #[test]
    fn only_a_replica_in_the_map_may_be_asked() {
        let (now, ids) = (Instant::now(), ids());
        let held = map(NODES, &ids);
        let primary = Switchover::begin(&held, ids[0], address(7000), admin(), now);
        assert_eq!(primary.err().as_deref(), Some("127.0.0.1:7000 is a primary already"));
        let stranger = Switchover::begin(&held, ids[2], address(7002), admin(), now);
        assert_eq!(stranger.err().as_deref(), Some("127.0.0.1:7002 is not a replica in the cluster's slot map"));
        assert!(Switchover::begin(&held, ids[1], address(7001), admin(), now).is_ok());
    }

    #[test]
    fn it_ends_when_a_map_shows_the_replica_as_primary() {
        let (now, ids) = (Instant::now(), ids());
        let mut switchover =
            Switchover::begin(&map(NODES, &ids), ids[1], address(7001), admin(), now).expect("a replica");
        assert_eq!(switchover.answered(b"+OK\r\n"), Progress::Waiting);
        assert_eq!(switchover.map_accepted(&map(NODES, &ids)), Progress::Waiting);
        assert_eq!(
            switchover.map_accepted(&map(PROMOTED, &ids)),
            Progress::Done(Ok("done: 127.0.0.1:7001 is the primary of 16384 slots now".into()))
        );
    }

    #[test]
    fn a_refusal_or_the_deadline_ends_it_with_an_error() {
        let (now, ids) = (Instant::now(), ids());
        let begin = || Switchover::begin(&map(NODES, &ids), ids[1], address(7001), admin(), now).expect("a replica");
        let mut refused = begin();
        assert_eq!(
            refused.answered(b"-ERR Master is down or failed, please use CLUSTER FAILOVER FORCE\r\n"),
            Progress::Done(Err("127.0.0.1:7001 refused CLUSTER FAILOVER: ERR Master is down or failed, please use \
                                CLUSTER FAILOVER FORCE"
                .into()))
        );
        let mut silent = begin();
        assert_eq!(silent.expired(now + Duration::from_secs(1)), Progress::Waiting);
        assert_eq!(
            silent.expired(now + SWITCHOVER_WAIT),
            Progress::Done(Err("127.0.0.1:7001 did not answer CLUSTER FAILOVER (waited 15 s)".into()))
        );
        assert_eq!(silent.answered(b"+OK\r\n"), Progress::Waiting);
        let Progress::Done(Err(text)) = silent.expired(now + SWITCHOVER_WAIT) else { panic!("expired") };
        assert!(text.contains("accepted CLUSTER FAILOVER but no map shows it as a primary yet"), "{text}");
    }
}
