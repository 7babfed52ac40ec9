//! Where a request goes: the routed master, or (in `readsToSlaves`) a healthy replica chosen round robin; nowhere
//! (hold it) while no master is routable; or back to the client with an error when nothing says which server
//! issued the `SCAN` cursor it continues.
//!
//! Two per-client facts bend the choice: the server that issued the cursor a `SCAN`-family call continues (see
//! `cursor`), and, with `read_your_writes`, how far the client's own writes are known to have replicated (see
//! `fence`). A cursor whose server is gone, down or no longer serves reads restarts its iteration from 0 on a
//! server that does: the client sees keys again (as `SCAN` allows), and misses none.

use crate::command::{CommandFlags, CommandSpec};
use crate::config::{Config, Mode};
use crate::cursor::{Issuer, Process};
use crate::fence::ReadFloor;
use crate::server_id::ServerId;
use crate::topology::{ServerView, Views};
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
    why_no_reads(view, master, policy).is_none()
}

/// Why `view` may not serve reads for `master`, in words for the status page (None: it may): the first of the
/// checks [`is_readable_replica`] makes that fails.
fn why_no_reads(view: &ServerView, master: &ServerView, policy: &ReadPolicy) -> Option<&'static str> {
    let Some(info) = view.info.as_ref() else { return Some("no INFO from it since it was last down") };
    let probe_late = view
        .probe_pending_since
        .is_some_and(|since| policy.now.saturating_duration_since(since) > policy.probe_late_after);
    let lag_ok = info.last_io_secs.is_none_or(|s| s >= 0 && Duration::from_secs(s as u64) <= policy.max_lag);
    if !view.is_routable() {
        Some("it is not routable (see its health)")
    } else if view.reads_vetoed {
        Some("the sentinels do not list it as a healthy replica")
    } else if probe_late {
        Some("its probe is late")
    } else if !view.replicates(&master.address) {
        Some("it does not replicate the routed master (or is loading)")
    } else if info.sync_in_progress || (!info.link_up && info.never_synced) {
        Some("syncing: its initial sync with the master has not finished")
    } else if !info.link_up {
        Some("link down: its link to the master is down")
    } else if !lag_ok {
        Some("lagging: it has not heard from the master within replica_max_lag")
    } else {
        None
    }
}

/// The next replica for a read, round robin from `cursor` (which is advanced), or None when no replica is usable.
/// With `min_offset`, only a replica known to have reached that replication offset will do.
fn read_replica(
    views: &Views,
    master: ServerId,
    cursor: &mut usize,
    policy: &ReadPolicy,
    min_offset: Option<i64>,
) -> Option<ServerId> {
    let master_view = views.get(master)?;
    let count = views.slot_count();
    let history = master_view.latest_reading().and_then(|info| info.replid.as_deref());
    let caught_up = |view: &ServerView| min_offset.is_none_or(|min| view.has_applied(history, min));
    for step in 0..count {
        let slot = (*cursor + step) % count;
        let Some(server) = views.id_in_slot(slot).filter(|id| *id != master) else { continue };
        let Some(view) = views.get(server) else { continue };
        if is_readable_replica(view, master_view, policy) && caught_up(view) {
            *cursor = slot + 1;
            return Some(server);
        }
    }
    None
}

/// What a forwarded request asks of the router.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Demand {
    /// Whether it may go to a replica at all (see [`Router::replica_read`]).
    pub(crate) replica_read: bool,
    /// For a `SCAN`-family call: who issued the cursor it continues.
    pub(crate) issuer: Issuer,
    /// How far the client's writes must have replicated on the replica that reads (`read_your_writes`).
    pub(crate) floor: ReadFloor,
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this server.
    Server(ServerId),
    /// A `SCAN`-family call whose cursor's server is gone, down or no longer serves reads: to this server with the
    /// cursor replaced by 0, so that the iteration starts again there.
    Restart(ServerId),
    /// Nowhere yet: hold it until a master is routable.
    Wait,
    /// Nowhere: answer the client with an error.
    Refuse(Refusal),
}

/// Whether `spec` is a read that a replica answers as the master would. Three read-only commands do not:
/// `EVALSHA_RO` (`SCRIPT LOAD` is not replicated, so a replica answers `NOSCRIPT` for a script loaded through the
/// proxy), and `TOUCH` and `OBJECT` (they update or report the access time and frequency of a key on the server
/// they reach, and the master's are the ones its eviction uses).
fn same_on_a_replica(spec: &CommandSpec) -> bool {
    spec.flags.contains(CommandFlags::READONLY)
        && !spec.flags.contains(CommandFlags::WRITE)
        && !matches!(spec.name, "evalsha_ro" | "touch" | "object")
        && !spec.name.starts_with("object|")
}

/// The routing decision and its round-robin position.
pub(crate) struct Router {
    reads_to_replicas: bool,
    read_your_writes: bool,
    max_lag: Duration,
    probe_late_after: Duration,
    cursor: usize,
}

impl Router {
    /// Routing as `config` says.
    pub(crate) fn new(config: &Config) -> Router {
        let reads_to_replicas = config.mode == Mode::ReadsToSlaves;
        Router {
            reads_to_replicas,
            read_your_writes: reads_to_replicas && config.read_your_writes,
            max_lag: config.replica_max_lag,
            probe_late_after: config.check_period / 2,
            cursor: 0,
        }
    }

    /// Whether a request for `spec` may be read from a replica: `readsToSlaves`, a command Redis flags read-only
    /// that means the same on a replica, and not bound to the client's private connection (which goes to the
    /// master).
    pub(crate) fn replica_read(&self, spec: Option<&'static CommandSpec>, private: bool) -> bool {
        self.reads_to_replicas && !private && spec.is_some_and(same_on_a_replica)
    }

    /// Why `server` gets no reads now, for the status page (None: it may get them, or reads do not go to
    /// replicas: `allToMaster`, or it is the routed master).
    pub(crate) fn why_no_reads(
        &self,
        now: Instant,
        views: &Views,
        master: Option<ServerId>,
        server: ServerId,
    ) -> Option<&'static str> {
        if !self.reads_to_replicas || master == Some(server) {
            return None;
        }
        let Some(master) = master else { return Some("no master is routed") };
        let policy = ReadPolicy { now, max_lag: self.max_lag, probe_late_after: self.probe_late_after };
        why_no_reads(views.get(server)?, views.get(master)?, &policy)
    }

    /// Cluster mode: the next of `replicas` of the shard led by `primary` fit to serve reads, round robin (None:
    /// none is; read from the primary).
    pub(crate) fn cluster_replica(
        &mut self,
        now: Instant,
        views: &Views,
        primary: ServerId,
        replicas: &[ServerId],
    ) -> Option<ServerId> {
        let primary_view = views.get(primary)?;
        let policy = ReadPolicy { now, max_lag: self.max_lag, probe_late_after: self.probe_late_after };
        let count = replicas.len();
        let found = (0..count).find_map(|step| {
            let replica = replicas[(self.cursor + step) % count];
            views.get(replica).is_some_and(|v| is_readable_replica(v, primary_view, &policy)).then_some((step, replica))
        });
        let (step, replica) = found?;
        self.cursor = self.cursor.wrapping_add(step + 1);
        Some(replica)
    }

    /// Whether clients' writes fence their reads (`read_your_writes` in `readsToSlaves`).
    pub(crate) fn read_your_writes(&self) -> bool {
        self.read_your_writes
    }

    /// Whether a request that is not a replica read fences the client's reads until it has replicated: anything
    /// that may change data (flagged `write` or `may_replicate`, a script, or unknown to the table), and anything
    /// on a private connection (`EXEC` carries no write flag but runs the queued writes).
    pub(crate) fn fences(&self, spec: Option<&'static CommandSpec>, private: bool) -> bool {
        let may_write = |s: &CommandSpec| {
            // Redis flags scripts by what the script declares, not in the command table.
            s.flags.intersects(CommandFlags::WRITE | CommandFlags::MAY_REPLICATE)
                || matches!(s.name, "eval" | "evalsha" | "fcall")
        };
        self.read_your_writes && (private || spec.is_none_or(may_write))
    }

    /// The server a forwarded request goes to; `master` is the routed master.
    pub(crate) fn route(&mut self, now: Instant, demand: Demand, views: &Views, master: Option<ServerId>) -> Route {
        let Some(routed) = master else { return Route::Wait };
        if let Issuer::Server(issuer) = demand.issuer {
            if let Some(route) = self.route_to_issuer(now, issuer, demand.replica_read, views, routed) {
                return route;
            }
            // Anywhere else the iteration starts again, where a new one would go.
            return match self.route(now, Demand { issuer: Issuer::Anyone, ..demand }, views, master) {
                Route::Server(server) => Route::Restart(server),
                other => other,
            };
        }
        if demand.replica_read {
            if demand.issuer == Issuer::Unknown {
                return Route::Refuse(Refusal::UnknownCursor);
            }
            let min_offset = match demand.floor {
                ReadFloor::Any => Some(None),
                ReadFloor::Offset(offset) => Some(Some(offset)),
                ReadFloor::Master => None,
            };
            if let Some(min_offset) = min_offset {
                let policy = ReadPolicy { now, max_lag: self.max_lag, probe_late_after: self.probe_late_after };
                if let Some(replica) = read_replica(views, routed, &mut self.cursor, &policy, min_offset) {
                    return Route::Server(replica);
                }
            }
        }
        Self::to_master(views, routed)
    }

    /// The routed master for a request that goes nowhere else (every request in `allToMaster`), or None when it
    /// must wait for one.
    pub(crate) fn route_to_master(&self, views: &Views, master: Option<ServerId>) -> Option<ServerId> {
        let master = master?;
        // A master whose connections just failed gets nothing until a probe hears from it again: requests wait
        // (for it, or for a failover) instead of failing one by one.
        views.get(master).is_some_and(ServerView::is_routable).then_some(master)
    }

    fn to_master(views: &Views, master: ServerId) -> Route {
        if views.get(master).is_some_and(ServerView::is_routable) {
            Route::Server(master)
        } else {
            Route::Wait
        }
    }

    /// A cursor continues only on the process that issued it: the master if it still is the master, a replica if
    /// it still serves reads, and not restarted since; None when that does not hold (anywhere else the iteration
    /// would silently skip or repeat entries, so it starts again).
    fn route_to_issuer(
        &self,
        now: Instant,
        process: Process,
        replica_read: bool,
        views: &Views,
        master: ServerId,
    ) -> Option<Route> {
        let issuer = process.server;
        if views.get(issuer)?.incarnation != process.incarnation {
            return None;
        }
        if issuer == master {
            return Some(Self::to_master(views, master));
        }
        let policy = ReadPolicy { now, max_lag: self.max_lag, probe_late_after: self.probe_late_after };
        let (view, master_view) = (views.get(issuer)?, views.get(master)?);
        (replica_read && is_readable_replica(view, master_view, &policy)).then_some(Route::Server(issuer))
    }

    /// Whether reads are split (`readsToSlaves`): only then do cursors and writes bend the route. In
    /// `allToMaster` every cursor comes from the master (an iteration that spans a failover is not detected).
    pub(crate) fn splits_reads(&self) -> bool {
        self.reads_to_replicas
    }
}

/// Why a request is answered with an error instead of being routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Nothing says which server issued the `SCAN` cursor.
    UnknownCursor,
}

impl Refusal {
    /// The error message (without the leading `-`).
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::UnknownCursor => {
                "ERR redis-proxy: this SCAN cursor was not returned on this connection, and in readsToSlaves only \
                 the server that issued a cursor can continue it; restart the iteration from 0 on one connection"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ServerAddress;
    use crate::topology::{ReplicationInfo, Role};

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
        let views: Views = Views::from_iter([
            view(1, ReplicationInfo { role: Some(Role::Master), ..Default::default() }),
            view(2, replica(true, 0)),
            view(3, replica(false, 0)),
            view(4, replica(true, 100)),
            view(5, replica(true, 1)),
        ]);
        let mut cursor = 0;
        let policy = ReadPolicy {
            now: Instant::now(),
            max_lag: Duration::from_secs(10),
            probe_late_after: Duration::from_secs(1),
        };
        let picks: Vec<usize> = (0..4)
            .map(|_| read_replica(&views, ServerId::first(0), &mut cursor, &policy, None).unwrap().slot())
            .collect();
        assert_eq!(picks, vec![1, 4, 1, 4]);
    }

    /// A master (server 0) with two linked replicas whose known offsets are 100 and 200.
    fn cluster() -> Views {
        let replica = |offset| ReplicationInfo {
            role: Some(Role::Replica),
            master: Some(("127.0.0.1".into(), 1)),
            link_up: true,
            last_io_secs: Some(0),
            repl_offset: offset,
            replid: Some("history".into()),
            ..Default::default()
        };
        let master = ReplicationInfo { role: Some(Role::Master), replid: Some("history".into()), ..Default::default() };
        let mut views: Views = Views::from_iter([view(1, master), view(2, replica(100)), view(3, replica(200))]);
        for (_, v) in views.iter_mut() {
            v.info_at = Some(Instant::now());
        }
        views
    }

    fn router(extra: &str) -> Router {
        let config = Config::from_json(&format!(
            r#"{{"servers": [{{"port": 1}}, {{"port": 2}}, {{"port": 3}}], "mode": "readsToSlaves"{extra}}}"#
        ))
        .unwrap();
        Router::new(&config)
    }

    fn process(slot: usize) -> Process {
        Process { server: ServerId::first(slot), incarnation: 0 }
    }

    fn read(issuer: Issuer, floor: ReadFloor) -> Demand {
        Demand { replica_read: true, issuer, floor }
    }

    #[test]
    fn a_cursor_goes_back_to_the_server_that_issued_it() {
        let (mut router, mut views, now) = (router(""), cluster(), Instant::now());
        let master = Some(ServerId::first(0));
        for _ in 0..4 {
            let demand = read(Issuer::Server(process(2)), ReadFloor::Any);
            assert_eq!(router.route(now, demand, &views, master), Route::Server(ServerId::first(2)));
        }
        let from_master = read(Issuer::Server(process(0)), ReadFloor::Any);
        assert_eq!(router.route(now, from_master, &views, master), Route::Server(ServerId::first(0)));
        // The issuing replica lost its link: the iteration starts again where a new one would go.
        views[2].info.as_mut().unwrap().link_up = false;
        let route = router.route(now, read(Issuer::Server(process(2)), ReadFloor::Any), &views, master);
        assert_eq!(route, Route::Restart(ServerId::first(1)), "the one readable replica");
        // The issuing replica restarted (a new incarnation of the same server): the iteration starts again, here on
        // the replica round robin comes to, which is the same server's new process.
        views[2].info.as_mut().unwrap().link_up = true;
        views[2].incarnation += 1;
        let route = router.route(now, read(Issuer::Server(process(2)), ReadFloor::Any), &views, master);
        assert_eq!(route, Route::Restart(ServerId::first(2)));
        // The issuing replica was removed: the same.
        let mut removed = views.clone();
        removed.remove(ServerId::first(2));
        let route = router.route(now, read(Issuer::Server(process(2)), ReadFloor::Any), &removed, master);
        assert_eq!(route, Route::Restart(ServerId::first(1)));
        // A cursor of a master that was replaced (failover) starts again on the new master.
        let old_master = read(Issuer::Server(process(0)), ReadFloor::Any);
        let new_master = Some(ServerId::first(1));
        assert_eq!(router.route(now, old_master, &views, new_master), Route::Restart(ServerId::first(1)));
        // No master: held, as every request is.
        assert_eq!(router.route(now, read(Issuer::Server(process(1)), ReadFloor::Any), &views, None), Route::Wait);
    }

    #[test]
    fn an_unknown_cursor_is_refused_only_where_reads_are_split() {
        let (mut router, views, now) = (router(""), cluster(), Instant::now());
        let master = Some(ServerId::first(0));
        assert!(matches!(router.route(now, read(Issuer::Unknown, ReadFloor::Any), &views, master), Route::Refuse(_)));
        // On the client's private connection (or in allToMaster) everything goes to the master anyway.
        let private = Demand { replica_read: false, issuer: Issuer::Unknown, floor: ReadFloor::Any };
        assert_eq!(router.route(now, private, &views, master), Route::Server(ServerId::first(0)));
        let config = Config::from_json(r#"{"servers": [{"port": 1}, {"port": 2}, {"port": 3}]}"#).unwrap();
        let mut all_to_master = Router::new(&config);
        let scan = ["scan", "0"].map(|s| s.to_string());
        let spec = crate::command::resolve(scan[0].as_bytes(), Some(scan[1].as_bytes()));
        assert!(!all_to_master.replica_read(spec, false));
        assert!(router.replica_read(spec, false));
        assert_eq!(all_to_master.route(now, private, &views, master), Route::Server(ServerId::first(0)));
    }

    #[test]
    fn a_fenced_read_goes_only_where_the_write_has_replicated() {
        let (mut router, views, now) = (router(""), cluster(), Instant::now());
        let master = Some(ServerId::first(0));
        let route = |router: &mut Router, floor| router.route(now, read(Issuer::Anyone, floor), &views, master);
        assert_eq!(route(&mut router, ReadFloor::Master), Route::Server(ServerId::first(0)));
        for _ in 0..3 {
            assert_eq!(route(&mut router, ReadFloor::Offset(150)), Route::Server(ServerId::first(2)));
        }
        assert_eq!(
            route(&mut router, ReadFloor::Offset(201)),
            Route::Server(ServerId::first(0)),
            "no replica has it yet"
        );
        let spread: Vec<Route> = (0..2).map(|_| route(&mut router, ReadFloor::Offset(100))).collect();
        assert!(
            spread.contains(&Route::Server(ServerId::first(1))) && spread.contains(&Route::Server(ServerId::first(2)))
        );
        // An offset of another replication history (a server before its resync) proves nothing.
        let mut resyncing = views.clone();
        resyncing[2].info.as_mut().unwrap().replid = Some("its own".into());
        let read = read(Issuer::Anyone, ReadFloor::Offset(150));
        assert_eq!(router.route(now, read, &resyncing, master), Route::Server(ServerId::first(0)));
    }

    #[test]
    fn writes_fence_reads_only_with_read_your_writes() {
        let spec = |name: &str| crate::command::resolve(name.as_bytes(), None);
        let on = router("");
        assert!(on.read_your_writes());
        assert!(on.fences(spec("set"), false));
        assert!(on.fences(spec("eval"), false), "a script may write");
        assert!(on.fences(spec("exec"), true), "a private connection may carry MULTI's writes");
        assert!(on.fences(None, false), "an unknown command may write");
        assert!(!on.fences(spec("ping"), false));
        assert!(!on.fences(spec("info"), false));
        let off = router(r#", "read_your_writes": false"#);
        assert!(!off.read_your_writes() && !off.fences(spec("set"), false));
    }
}
