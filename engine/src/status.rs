//! What an operator sees: the [`StatusSnapshot`] the engine hands out on request (for the status page, JSON,
//! metrics and health checks), the [`Counters`] it keeps while running, and the failover history.
//!
//! Counting stays cheap: every counter is a plain integer bumped where the thing happens (one add, no allocation,
//! no lookup); everything that can be computed when a snapshot is asked for (per-server connections, held
//! requests, lag) is computed then, not kept up to date on the hot path.

use crate::address::ServerAddress;
use crate::command::{CommandFlags, CommandSpec};
use crate::config::Mode;
use crate::event::Event;
use crate::topology::{Health, Role};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The routed master.
    Master,
    /// A replica (`readsToSlaves`).
    Replica,
    /// The proxy itself (`PING`, `HELLO`, `WAIT`, `CLIENT SETNAME`, errors it gives ...).
    Proxy,
}

impl Target {
    /// Every target, in the order of the counter arrays.
    pub const ALL: [Target; 3] = [Target::Master, Target::Replica, Target::Proxy];

    /// The lower-case name used in metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Target::Master => "master",
            Target::Replica => "replica",
            Target::Proxy => "proxy",
        }
    }
}

/// What kind of command a request is, by the Redis command table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Read-only commands.
    Read,
    /// Commands that may write.
    Write,
    /// Everything else (connection, server and unknown commands).
    Other,
}

impl Class {
    /// Every class, in the order of the counter arrays.
    pub const ALL: [Class; 3] = [Class::Read, Class::Write, Class::Other];

    /// The lower-case name used in metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Other => "other",
        }
    }

    /// The class of a command.
    pub(crate) fn of(spec: Option<&CommandSpec>) -> Class {
        match spec {
            Some(spec) if spec.flags.contains(CommandFlags::WRITE) => Class::Write,
            Some(spec) if spec.flags.contains(CommandFlags::READONLY) => Class::Read,
            _ => Class::Other,
        }
    }
}

/// The latency histogram observes the requests whose per-client sequence number is a multiple of this (one in 8).
pub const LATENCY_SAMPLE: u64 = 8;

/// Buckets of the latency histogram: bucket `i` counts latencies below 2^`i` microseconds (1 µs up to about
/// 8.4 s); the last one counts the rest.
pub const LATENCY_BUCKETS: usize = 25;

/// Request latency as the proxy sees it (from the request leaving for a server to its reply arriving), in
/// power-of-two microsecond buckets: finding the bucket is one `leading_zeros`, not a search. It observes one
/// request in [`LATENCY_SAMPLE`] (by each client's request sequence), so its count is about that fraction of the
/// forwarded requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `counts[i]`: replies that took less than [`LatencyHistogram::upper_bound`]`(i)` and at least the bound
    /// below (not cumulative).
    pub counts: [u64; LATENCY_BUCKETS],
    /// Sum of every observed latency, in microseconds.
    pub sum_micros: u64,
}

impl LatencyHistogram {
    /// Counts one latency.
    pub(crate) fn observe(&mut self, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.counts[bucket.min(LATENCY_BUCKETS - 1)] += 1;
        self.sum_micros += micros;
    }

    /// The upper bound of bucket `index` (None: the last bucket, unbounded).
    pub fn upper_bound(index: usize) -> Option<Duration> {
        (index + 1 < LATENCY_BUCKETS).then(|| Duration::from_micros(1 << index))
    }

    /// How many latencies were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Errors by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Clients closed after sending something that is not RESP.
    pub protocol: u64,
    /// Requests that got an error because the connection they were sent on was lost.
    pub backend_lost: u64,
    /// Held requests that got an error because no master came in time (or the hold memory was full).
    pub hold_expired: u64,
    /// Clients turned away at `max_clients`.
    pub client_rejected: u64,
    /// Subscribed or MONITOR clients closed at `client_output_limit`.
    pub output_limit: u64,
}

/// Everything the engine counts since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Clients accepted (including those turned away at once).
    pub clients_accepted: u64,
    /// Requests answered, by [`Target`] then [`Class`] (indexes as in their `ALL` arrays).
    pub requests: [[u64; 3]; 3],
    /// Latency of requests forwarded to a server.
    pub latency: LatencyHistogram,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes queued for clients.
    pub bytes_out: u64,
    /// Servers counted down.
    pub servers_down: u64,
}

impl Counters {
    /// Counts what `event` says happened.
    pub(crate) fn count_event(&mut self, event: &Event) {
        match event {
            Event::ClientAccepted { .. } => self.clients_accepted += 1,
            Event::ClientRejected { .. } => {
                self.clients_accepted += 1;
                self.errors.client_rejected += 1;
            }
            Event::ClientProtocolError { .. } => self.errors.protocol += 1,
            Event::ClientOutputLimit { .. } => self.errors.output_limit += 1,
            Event::BackendLost { failed_requests, .. } => self.errors.backend_lost += *failed_requests as u64,
            Event::RequestsExpired { count, .. } => self.errors.hold_expired += *count as u64,
            Event::ServerDown { .. } => self.servers_down += 1,
            _ => {}
        }
    }

    /// Counts a request answered by `target`.
    #[inline]
    pub(crate) fn request(&mut self, target: Target, class: Class) {
        self.requests[target as usize][class as usize] += 1;
    }
}

/// One failover, automatic or asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverRecord {
    /// The master writes went to before (None: there was none, e.g. at start).
    pub from: Option<ServerAddress>,
    /// The master writes go to after (None while it is under way, or if it ended without one).
    pub to: Option<ServerAddress>,
    /// Why it began (`it is down`, `planned switchover (PROXY FAILOVER)` ...).
    pub reason: String,
    /// Which rule chose the new master, once one was chosen.
    pub chosen_by: Option<String>,
    /// How long ago it began.
    pub started_ago: Duration,
    /// How long writes had no master (None while it is under way).
    pub duration: Option<Duration>,
}

/// How many failovers [`StatusSnapshot::failovers`] keeps (the newest).
pub const FAILOVER_HISTORY: usize = 20;

/// The failover history as the engine keeps it (instants, not ages).
#[derive(Debug, Default)]
pub(crate) struct History {
    records: VecDeque<Record>,
    /// Failovers so far, by reason (they are few, and the reasons are the engine's fixed texts).
    by_reason: Vec<(String, u64)>,
    /// How long the last completed failover took.
    last_duration: Option<Duration>,
}

#[derive(Debug)]
struct Record {
    from: Option<ServerAddress>,
    to: Option<ServerAddress>,
    reason: String,
    chosen_by: Option<String>,
    started: Instant,
    ended: Option<Instant>,
}

impl History {
    /// The master `from` was lost (or given up for a switchover) at `now` for `reason`.
    pub(crate) fn begin(&mut self, now: Instant, from: ServerAddress, reason: &str) {
        if self.records.len() == FAILOVER_HISTORY {
            self.records.pop_front();
        }
        self.records.push_back(Record {
            from: Some(from),
            to: None,
            reason: reason.to_string(),
            chosen_by: None,
            started: now,
            ended: None,
        });
        match self.by_reason.iter_mut().find(|(r, _)| r == reason) {
            Some((_, count)) => *count += 1,
            None => self.by_reason.push((reason.to_string(), 1)),
        }
    }

    /// The failover under way chose `candidate` by `rule`.
    pub(crate) fn chose(&mut self, candidate: &ServerAddress, rule: &str) {
        if let Some(record) = self.records.back_mut().filter(|r| r.ended.is_none()) {
            record.to = Some(candidate.clone());
            record.chosen_by = Some(rule.to_string());
        }
    }

    /// Writes go to `master` again from `now`: the failover under way, if any, is over.
    pub(crate) fn end(&mut self, now: Instant, master: &ServerAddress) {
        if let Some(record) = self.records.back_mut().filter(|r| r.ended.is_none()) {
            record.to = Some(master.clone());
            record.ended = Some(now);
            self.last_duration = Some(now.saturating_duration_since(record.started));
        }
    }

    fn snapshot(&self, now: Instant) -> Vec<FailoverRecord> {
        self.records
            .iter()
            .map(|r| FailoverRecord {
                from: r.from.clone(),
                to: r.to.clone(),
                reason: r.reason.clone(),
                chosen_by: r.chosen_by.clone(),
                started_ago: now.saturating_duration_since(r.started),
                duration: r.ended.map(|end| end.saturating_duration_since(r.started)),
            })
            .collect()
    }
}

/// Backend connections to one server, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounts {
    /// Shared pipelined connections.
    pub shared: usize,
    /// Private connections (pinned by a client's state, or idle and clean).
    pub private: usize,
    /// The monitor's probe and knock connections, and out-of-band ones.
    pub probe: usize,
}

/// One server as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Where it is.
    pub address: ServerAddress,
    /// Its role as it last reported it (None: not known, e.g. down).
    pub role: Option<Role>,
    /// Whether it is the master writes are routed to.
    pub routed_master: bool,
    /// How it is doing.
    pub health: Health,
    /// Why it is in that state (the evidence).
    pub why: &'static str,
    /// Its replication offset from its last `INFO`.
    pub repl_offset: Option<i64>,
    /// Replicas: how many bytes of the routed master's stream it has not yet (as of the last `INFO`s).
    pub lag_bytes: Option<i64>,
    /// Replicas: seconds since it last heard from its master (`master_last_io_seconds_ago`).
    pub lag_seconds: Option<i64>,
    /// Replicas: whether the link to its master is up.
    pub link_up: Option<bool>,
    /// Replicas: what replication is doing, from its last `INFO`: `in sync`, `syncing` (a sync with its master
    /// is in progress, or its initial sync has not finished), `link down`, or `lagging` (it has not heard from its
    /// master within `replica_max_lag`).
    pub replication: Option<&'static str>,
    /// `readsToSlaves`: why this server gets no reads now (None: it gets them, it is the routed master, or reads
    /// do not go to replicas).
    pub no_reads_because: Option<&'static str>,
    /// The last thing that kept it from being used, briefly (`refused`, `timed out`, `TLS certificate refused
    /// (expired)`, `WRONGPASS` ...), until it answers again; what a held request's error names. No secret and no
    /// certificate content.
    pub obstacle: Option<String>,
    /// How long ago it last gave a valid probe reply (None: never).
    pub last_ok_ago: Option<Duration>,
    /// The proxy's connections to it.
    pub connections: BackendCounts,
}

/// One sample of the trend, as [`StatusSnapshot::trend`] hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrendSample {
    /// How long before the snapshot it was taken.
    pub ago: Duration,
    /// Requests answered since start, by [`Target`] (indexes as in [`Target::ALL`]): running totals.
    pub requests_total: [u64; 3],
    /// The median latency of the requests observed since the sample before (None: none observed, or the first
    /// sample), estimated within its power-of-two histogram bucket.
    pub latency_p50: Option<Duration>,
    /// The 99th percentile latency, likewise.
    pub latency_p99: Option<Duration>,
    /// Requests held at that moment.
    pub held_requests: usize,
    /// Each replica's lag behind the routed master at that moment, in bytes (servers without one, and replicas
    /// whose link is down or that are syncing, are left out).
    pub lag_bytes: Vec<(ServerAddress, i64)>,
}

/// Everything an operator may want to know, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The servers, in configuration order.
    pub servers: Vec<ServerStatus>,
    /// The master writes go to now.
    pub master: Option<ServerAddress>,
    /// How long writes have gone to it.
    pub master_since: Option<Duration>,
    /// Why no master is routable (None when one is): for `/health`.
    pub no_master_reason: Option<String>,
    /// Read routing.
    pub mode: Mode,
    /// The newest failovers, oldest first.
    pub failovers: Vec<FailoverRecord>,
    /// Failovers since start, by reason.
    pub failovers_by_reason: Vec<(String, u64)>,
    /// How long the last completed failover left writes without a master.
    pub last_failover_duration: Option<Duration>,
    /// Clients connected.
    pub clients: usize,
    /// Requests held (waiting for a master, or behind a barrier).
    pub held_requests: usize,
    /// Memory the held requests take.
    pub held_bytes: usize,
    /// The counters.
    pub counters: Counters,
    /// Samples of the last [`crate::TREND_WINDOW`], oldest first, one per [`crate::TREND_INTERVAL`]: for the status
    /// page's charts.
    pub trend: Vec<TrendSample>,
    /// Cluster mode: the slot map and its shards (None in the other modes).
    pub cluster: Option<ClusterStatus>,
}

/// Cluster mode: the slot map routing follows, and what following it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The shards of the map held, by first slot.
    pub shards: Vec<ShardStatus>,
    /// The slots some shard serves (16384 when the whole cluster is served).
    pub served_slots: usize,
    /// How long ago the map held was read (None: no map yet).
    pub map_age: Option<Duration>,
    /// The node it came from.
    pub map_from: Option<ServerAddress>,
    /// Requests in the cluster awaiting their reply (including those waiting to be sent again).
    pub in_flight: usize,
    /// Redirections, refreshes and fan-outs so far.
    pub counts: ClusterCounts,
}

/// One shard of the slot map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// Its primary.
    pub primary: ServerAddress,
    /// Its replicas, as the cluster lists them.
    pub replicas: Vec<ServerAddress>,
    /// How many slots it serves.
    pub slots: usize,
    /// The primary's config epoch (0: learnt from a `MOVED`).
    pub epoch: u64,
    /// Whether requests can go to its primary now (the cluster has not failed it and the probes find it
    /// routable); if not, they are held until the cluster promotes a replica.
    pub usable: bool,
}

/// What cluster mode counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Maps read from the nodes.
    pub refreshes: u64,
    /// Maps refused (older by config epoch, or from a node that does not see a working cluster).
    pub maps_refused: u64,
    /// `MOVED` replies followed.
    pub moved: u64,
    /// `ASK` replies followed.
    pub ask: u64,
    /// Requests sent again after `TRYAGAIN`, `CLUSTERDOWN` or a connection that never opened.
    pub retries: u64,
    /// Requests split over several slots or sent to every primary.
    pub fanouts: u64,
}

impl StatusSnapshot {
    /// Whether a master is routable (what `/health` answers 200 for).
    pub fn healthy(&self) -> bool {
        self.no_master_reason.is_none()
    }

    /// Adds what a worker engine counted to this snapshot of its deciding engine, so that the proxy's status is one
    /// whole: its clients, held requests, counters and connections to each server. The servers, the master and the
    /// failovers are the decider's (a worker's own judgement of a server, or a server it counted down, is not).
    pub fn add_worker(&mut self, worker: &StatusSnapshot) {
        self.clients += worker.clients;
        self.held_requests += worker.held_requests;
        self.held_bytes += worker.held_bytes;
        self.counters.add(&worker.counters);
        if let (Some(mine), Some(theirs)) = (self.cluster.as_mut(), worker.cluster.as_ref()) {
            // The map, its refreshes and refusals are the decider's; the requests are the workers'.
            mine.in_flight += theirs.in_flight;
            mine.counts.moved += theirs.counts.moved;
            mine.counts.ask += theirs.counts.ask;
            mine.counts.retries += theirs.counts.retries;
            mine.counts.fanouts += theirs.counts.fanouts;
        }
        for server in &mut self.servers {
            let Some(theirs) = worker.servers.iter().find(|s| s.address == server.address) else { continue };
            server.connections.shared += theirs.connections.shared;
            server.connections.private += theirs.connections.private;
            server.connections.probe += theirs.connections.probe;
        }
    }
}

impl Counters {
    /// Adds a worker's counts (not its servers counted down: the decider counts those).
    fn add(&mut self, other: &Counters) {
        self.clients_accepted += other.clients_accepted;
        for (mine, theirs) in self.requests.iter_mut().flatten().zip(other.requests.iter().flatten()) {
            *mine += theirs;
        }
        for (mine, theirs) in self.latency.counts.iter_mut().zip(&other.latency.counts) {
            *mine += theirs;
        }
        self.latency.sum_micros += other.latency.sum_micros;
        let (errors, theirs) = (&mut self.errors, &other.errors);
        errors.protocol += theirs.protocol;
        errors.backend_lost += theirs.backend_lost;
        errors.hold_expired += theirs.hold_expired;
        errors.client_rejected += theirs.client_rejected;
        errors.output_limit += theirs.output_limit;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// What the coordinator gathers from the machines for [`History::snapshot_into`].
pub(crate) struct Gathered {
    pub(crate) servers: Vec<ServerStatus>,
    pub(crate) master: Option<ServerAddress>,
    pub(crate) master_since: Option<Duration>,
    pub(crate) no_master_reason: Option<String>,
    pub(crate) mode: Mode,
    pub(crate) clients: usize,
    pub(crate) held: (usize, usize),
}

impl History {
    /// The snapshot of `gathered` with the history and `counters`, at `now`.
    pub(crate) fn snapshot_into(&self, now: Instant, gathered: Gathered, counters: &Counters) -> StatusSnapshot {
        StatusSnapshot {
            servers: gathered.servers,
            master: gathered.master,
            master_since: gathered.master_since,
            no_master_reason: gathered.no_master_reason,
            mode: gathered.mode,
            failovers: self.snapshot(now),
            failovers_by_reason: self.by_reason.clone(),
            last_failover_duration: self.last_duration,
            clients: gathered.clients,
            held_requests: gathered.held.0,
            held_bytes: gathered.held.1,
            counters: counters.clone(),
            trend: Vec::new(),
            cluster: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_powers_of_two_microseconds() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::ZERO);
        histogram.observe(Duration::from_micros(1));
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_secs(3600));
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[1], 1);
        // 100 µs: 64 <= 100 < 128 = 2^7.
        assert_eq!(histogram.counts[7], 1);
        assert_eq!(histogram.counts[LATENCY_BUCKETS - 1], 1);
        assert_eq!(histogram.count(), 4);
        assert_eq!(LatencyHistogram::upper_bound(7), Some(Duration::from_micros(128)));
        assert_eq!(LatencyHistogram::upper_bound(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn history_records_reason_choice_and_duration() {
        let start = Instant::now();
        let mut history = History::default();
        let a = ServerAddress { host: "a".into(), port: 1 };
        let b = ServerAddress { host: "b".into(), port: 2 };
        history.begin(start, a.clone(), "it is down");
        history.chose(&b, "lowest priority");
        history.end(start + Duration::from_millis(1500), &b);
        let records = history.snapshot(start + Duration::from_secs(2));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].from, Some(a));
        assert_eq!(records[0].to, Some(b));
        assert_eq!(records[0].duration, Some(Duration::from_millis(1500)));
        assert_eq!(records[0].started_ago, Duration::from_secs(2));
        assert_eq!(history.by_reason, vec![("it is down".to_string(), 1)]);
    }
}
