//! What the proxy knows of each server: reachability from probes, role and replication facts from `INFO`.

use crate::address::ServerAddress;
use crate::failure::Failures;
use crate::server_id::ServerTable;
use std::fmt;
use std::time::Instant;

/// What is known of every watched server, by id.
pub(crate) type Views = ServerTable<ServerView>;

/// A server's replication role as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `role:master`
    Master,
    /// `role:slave`
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Replica => "replica",
        })
    }
}

/// Replication facts from one `INFO replication` (and `INFO server`) reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplicationInfo {
    /// `role`
    pub(crate) role: Option<Role>,
    /// `master_host` and `master_port` (replicas)
    pub(crate) master: Option<(String, u16)>,
    /// `master_link_status:up` (replicas)
    pub(crate) link_up: bool,
    /// `master_link_down_since_seconds` (replicas, while the link is down)
    pub(crate) link_down_since_secs: Option<u64>,
    /// `master_link_down_since_seconds:-1`: the link has not been up since the replica started, so its initial
    /// sync has not finished (it may still be in the handshake, before `master_sync_in_progress` says 1).
    pub(crate) never_synced: bool,
    /// `master_last_io_seconds_ago` (replicas)
    pub(crate) last_io_secs: Option<i64>,
    /// `slave_repl_offset` on replicas, `master_repl_offset` on masters
    pub(crate) repl_offset: i64,
    /// `slave_priority` / `replica_priority` (replicas; 100 when absent)
    pub(crate) priority: i64,
    /// `connected_slaves`
    pub(crate) connected_replicas: u64,
    /// `run_id` (from `INFO server`)
    pub(crate) run_id: Option<String>,
    /// `loading:1` (from `INFO persistence`, or a `-LOADING` reply)
    pub(crate) loading: bool,
    /// `master_sync_in_progress:1`
    pub(crate) sync_in_progress: bool,
    /// `master_replid`: the replication history this server serves (masters) or follows (replicas).
    pub(crate) replid: Option<String>,
    /// `master_replid2`: the history it continued when it was promoted (None when all zeros: never promoted).
    pub(crate) replid2: Option<String>,
}

impl ReplicationInfo {
    /// The facts of an `INFO` reply frame, if it is a bulk string (an error is no facts).
    pub(crate) fn from_reply(frame: &[u8]) -> Option<ReplicationInfo> {
        if frame.first() != Some(&b'$') && frame.first() != Some(&b'=') {
            return None;
        }
        let header_end = memchr::memchr(b'\n', frame)? + 1;
        Some(ReplicationInfo::parse(frame.get(header_end..frame.len().checked_sub(2)?)?))
    }

    /// Parses the text of an `INFO` bulk reply (any sections); unknown fields are ignored.
    pub(crate) fn parse(text: &[u8]) -> ReplicationInfo {
        let mut info = ReplicationInfo { priority: 100, ..ReplicationInfo::default() };
        let mut master_host = None;
        let mut master_port = None;
        let mut master_offset = None;
        let mut replica_offset = None;
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (key, value) = (&line[..colon], &line[colon + 1..]);
            let value_str = std::str::from_utf8(value).unwrap_or("");
            match key {
                b"role" => {
                    info.role = match value {
                        b"master" => Some(Role::Master),
                        b"slave" | b"replica" => Some(Role::Replica),
                        _ => None,
                    }
                }
                b"master_host" => master_host = Some(value_str.to_string()),
                b"master_port" => master_port = value_str.parse::<u16>().ok(),
                b"master_link_status" => info.link_up = value == b"up",
                b"master_link_down_since_seconds" => {
                    info.link_down_since_secs = value_str.parse().ok();
                    info.never_synced = value == b"-1";
                }
                b"master_last_io_seconds_ago" => info.last_io_secs = value_str.parse().ok(),
                b"master_repl_offset" => master_offset = value_str.parse().ok(),
                b"slave_repl_offset" => replica_offset = value_str.parse().ok(),
                b"slave_priority" | b"replica_priority" => info.priority = value_str.parse().unwrap_or(100),
                b"connected_slaves" => info.connected_replicas = value_str.parse().unwrap_or(0),
                b"run_id" => info.run_id = Some(value_str.to_string()),
                b"master_replid" => info.replid = Some(value_str.to_string()),
                b"master_replid2" if value.iter().any(|&b| b != b'0') => info.replid2 = Some(value_str.to_string()),
                b"loading" => info.loading = value == b"1",
                b"master_sync_in_progress" => info.sync_in_progress = value == b"1",
                _ => {}
            }
        }
        if let (Some(host), Some(port)) = (master_host, master_port) {
            info.master = Some((host, port));
        }
        info.repl_offset = match info.role {
            Some(Role::Replica) => replica_offset.or(master_offset).unwrap_or(0),
            _ => master_offset.unwrap_or(0),
        };
        info
    }
}

/// How a server is doing, as the probes and data connections tell it; the worse state wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// It answers probes (or nothing has gone wrong yet).
    Up,
    /// Alive but not answering: it replies `-BUSY` or `-LOADING`, or its probe is late while its port still
    /// accepts connections. Requests still go to it (they wait, as they would on Redis itself); it counts as down
    /// only after `busy_down_after`.
    Busy,
    /// A data connection to it was refused or lost since its last valid probe reply: route nothing to it until a
    /// probe hears from it again.
    Suspect,
    /// Its probe connection failed or broke since the last valid reply.
    Unreachable,
    /// No valid reply for `down_after`.
    Down,
}

impl Health {
    /// Every state, best first (the order of the gauge values in metrics).
    pub const ALL: [Health; 5] = [Health::Up, Health::Busy, Health::Suspect, Health::Unreachable, Health::Down];

    /// The lower-case name used in metrics, JSON and the status page.
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Busy => "busy",
            Health::Suspect => "suspect",
            Health::Unreachable => "unreachable",
            Health::Down => "down",
        }
    }

    /// What the state means, for the log.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Busy => "busy",
            Health::Suspect => "suspect after a lost connection",
            Health::Unreachable => "unreachable",
            Health::Down => "down",
        }
    }
}

/// Everything known about one server right now.
#[derive(Clone, Debug)]
pub(crate) struct ServerView {
    /// Where it is.
    pub(crate) address: ServerAddress,
    /// When it last gave a valid reply to a probe (None: never).
    pub(crate) last_ok: Option<Instant>,
    /// When the proxy started watching it (counts as the last valid reply for down detection until one arrives).
    pub(crate) watched_since: Instant,
    /// How it is doing.
    pub(crate) health: Health,
    /// The evidence for `health`, for the status page.
    pub(crate) why: &'static str,
    /// Being removed (`PROXY REMOVE`): no new requests, no role in failover; gone once its requests finished.
    pub(crate) draining: bool,
    /// The last `INFO` facts, if any since it was last seen down.
    pub(crate) info: Option<ReplicationInfo>,
    /// When the last `INFO` facts arrived.
    pub(crate) info_at: Option<Instant>,
    /// The run id it had when it last reported `role:slave` (kept while it is down).
    pub(crate) replica_run_id: Option<String>,
    /// It reports `role:master` and became master in place: it last reported `role:slave` with the same run id.
    /// A replica restarted without its `replicaof` setting comes up as master from its RDB file with the old
    /// history as `master_replid2`, which looks like a promotion but is not one (its run id is new).
    pub(crate) promoted_in_place: bool,
    /// The newest `INFO replication` sent for `WAIT`: when it was sent, and what it said.
    pub(crate) offset_seen: Option<(Instant, ReplicationInfo)>,
    /// The serial of the offset request `offset_seen` answered (see [`crate::monitor::Monitor::next_offset_serial`]).
    pub(crate) offset_serial: u64,
    /// Since when a probe has been waiting for its answer (None: none outstanding).
    pub(crate) probe_pending_since: Option<Instant>,
    /// Sentinel mode: the sentinels do not list it as a healthy replica, so it gets no reads.
    pub(crate) reads_vetoed: bool,
    /// Bumped whenever the process behind the address may have changed: its run id changed, it was counted down,
    /// or a connection to it was refused or lost. What belongs to one process (a `SCAN` cursor) is not used with
    /// another.
    pub(crate) incarnation: u64,
    /// What keeps it from being used (a refused or failed connect, credentials refused, no reply): what a held
    /// request's error names.
    pub(crate) failures: Failures,
}

impl ServerView {
    /// A server nothing is known about yet.
    pub(crate) fn new(address: ServerAddress, now: Instant) -> ServerView {
        ServerView {
            address,
            last_ok: None,
            watched_since: now,
            health: Health::Up,
            why: "not probed yet",
            draining: false,
            info: None,
            info_at: None,
            replica_run_id: None,
            promoted_in_place: false,
            offset_seen: None,
            offset_serial: 0,
            probe_pending_since: None,
            reads_vetoed: false,
            incarnation: 0,
            failures: Failures::default(),
        }
    }

    /// Takes the facts of a fresh `INFO` reply, received `now`: a new run id means a new process (a new
    /// incarnation), and a replica promoted in place is told from a restarted one. Returns the role reported when it
    /// or the master it names changed (for the log).
    pub(crate) fn learn(&mut self, info: ReplicationInfo, now: Instant) -> Option<Role> {
        let last_run_id = self.info.as_ref().and_then(|old| old.run_id.as_deref()).or(self.replica_run_id.as_deref());
        if last_run_id.is_some_and(|old| info.run_id.as_deref().is_some_and(|new| new != old)) {
            self.incarnation += 1;
        }
        let changed = self.info.as_ref().is_none_or(|old| old.role != info.role || old.master != info.master);
        match info.role {
            Some(Role::Replica) => {
                self.replica_run_id.clone_from(&info.run_id);
                self.promoted_in_place = false;
            }
            Some(Role::Master) => self.promoted_in_place = info.run_id.is_some() && self.replica_run_id == info.run_id,
            None => self.promoted_in_place = false,
        }
        let role = info.role.filter(|_| changed);
        self.info = Some(info);
        self.info_at = Some(now);
        role
    }

    /// It shows `evidence` that it is alive but busy: busy now if it was up. Returns whether it was.
    pub(crate) fn seems_busy(&mut self, evidence: &'static str) -> bool {
        let was_up = self.health == Health::Up;
        self.worsen(Health::Busy, evidence);
        was_up
    }

    /// Moves it to `health` for the reason `why`, unless it is in a worse state already.
    pub(crate) fn worsen(&mut self, health: Health, why: &'static str) {
        if self.health < health {
            self.health = health;
            self.why = why;
        }
    }

    /// Whether it counts as down.
    pub(crate) fn is_down(&self) -> bool {
        self.health == Health::Down
    }

    /// Whether its probe connection failed (or it is down).
    pub(crate) fn is_unreachable(&self) -> bool {
        self.health >= Health::Unreachable
    }

    /// Whether requests may be routed to it: nothing but busyness has shown since its last valid probe reply, and
    /// it accepts the proxy's credentials.
    pub(crate) fn is_routable(&self) -> bool {
        self.health <= Health::Busy && !self.failures.credentials_refused()
    }

    /// Whether it is up, known to report `role`, and not being removed (a draining server takes no part in
    /// routing or failover).
    pub(crate) fn is(&self, role: Role) -> bool {
        !self.is_down() && !self.draining && self.info.as_ref().is_some_and(|i| i.role == Some(role) && !i.loading)
    }

    /// Why this server, which does not replicate `master`, must be re-pointed to it: for the log.
    pub(crate) fn misplacement(&self, master: &ServerAddress) -> String {
        match self.info.as_ref().map(|i| (i.role, i.master.as_ref())) {
            Some((Some(Role::Master), _)) => format!("it reports role master beside the master {master}"),
            Some((Some(Role::Replica), Some((host, port)))) => {
                format!("it replicates {host}:{port}, not the master {master}")
            }
            _ => format!("it is not a replica of the master {master}"),
        }
    }

    /// Whether it is up, reports itself a replica, and names `master` as its master.
    pub(crate) fn replicates(&self, master: &ServerAddress) -> bool {
        self.is(Role::Replica)
            && self.info.as_ref().and_then(|i| i.master.as_ref()).is_some_and(|(h, p)| master.is_named(h, *p))
    }

    /// Whether this server was promoted from the replication history `other` serves: then it continues that
    /// history and is the newer master of the two.
    pub(crate) fn continues_history_of(&self, other: &ServerView) -> bool {
        let replid2 = self.info.as_ref().and_then(|i| i.replid2.as_deref());
        let other_replid = other.info.as_ref().and_then(|i| i.replid.as_deref());
        replid2.is_some() && replid2 == other_replid
    }

    /// Its newest replication facts: from an offset request or the periodic `INFO`, whichever is newer.
    pub(crate) fn latest_reading(&self) -> Option<&ReplicationInfo> {
        let periodic = self.info.as_ref().zip(self.info_at);
        match (self.offset_seen.as_ref(), periodic) {
            (Some((seen_at, seen)), Some((info, info_at))) => Some(if *seen_at >= info_at { seen } else { info }),
            (Some((_, seen)), None) => Some(seen),
            (None, Some((info, _))) => Some(info),
            (None, None) => None,
        }
    }

    /// Whether its newest facts show it has processed the replication stream of `history` (the master's
    /// `master_replid`) up to `offset`: offsets of another history (its own before a resync) mean nothing.
    pub(crate) fn has_applied(&self, history: Option<&str>, offset: i64) -> bool {
        self.latest_reading()
            .is_some_and(|info| history.is_some() && info.replid.as_deref() == history && info.repl_offset >= offset)
    }

    /// The run id, or "" when unknown (sorts first; only a tie-break).
    pub(crate) fn run_id(&self) -> &str {
        self.info.as_ref().and_then(|i| i.run_id.as_deref()).unwrap_or("")
    }
}

/// What a held request's error ends with: ` (address: obstacle; ...)` for every server with an obstacle, in
/// configuration order; empty when none has one.
pub(crate) fn obstacles_suffix(views: &Views) -> String {
    let mut parts =
        views.values().filter_map(|view| Some(format!("{}: {}", view.address, view.failures.obstacle()?.brief())));
    let Some(first) = parts.next() else { return String::new() };
    let mut suffix = format!(" ({first}");
    for part in parts {
        suffix.push_str("; ");
        suffix.push_str(&part);
    }
    suffix.push(')');
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replica_info() {
        let text = b"# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7001\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:1\r\nslave_repl_offset:420\r\nslave_priority:50\r\nconnected_slaves:0\r\nmaster_repl_offset:420\r\n";
        let info = ReplicationInfo::parse(text);
        assert_eq!(info.role, Some(Role::Replica));
        assert_eq!(info.master, Some(("127.0.0.1".to_string(), 7001)));
        assert!(info.link_up);
        assert_eq!(info.repl_offset, 420);
        assert_eq!(info.priority, 50);
        assert_eq!(info.replid2, None);
        assert!(!info.never_synced);
        let waiting =
            ReplicationInfo::parse(b"role:slave\r\nmaster_link_status:down\r\nmaster_link_down_since_seconds:-1\r\n");
        assert!(waiting.never_synced && !waiting.link_up && waiting.link_down_since_secs.is_none());
    }

    #[test]
    fn parses_replication_ids_of_a_promoted_master() {
        let text = b"role:master\r\nmaster_replid:bbbb\r\nmaster_replid2:aaaa\r\nmaster_replid2x:1\r\n";
        let info = ReplicationInfo::parse(text);
        assert_eq!(info.replid.as_deref(), Some("bbbb"));
        assert_eq!(info.replid2.as_deref(), Some("aaaa"));
        let never = ReplicationInfo::parse(b"master_replid2:0000000000000000000000000000000000000000\r\n");
        assert_eq!(never.replid2, None);
    }
}
