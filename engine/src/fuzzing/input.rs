//! The engine target's input: a [`Setup`] decoded with `arbitrary`, then [`Op`]s in a simple byte format.

use crate::Config;
use arbitrary::{Arbitrary, Unstructured};

/// How many server addresses the admin target knows: the configured ones and those it may add.
pub(super) const UNIVERSE: usize = 4;

/// How many sentinels the Sentinel target may configure, on ports 26000 and up.
pub(super) const MAX_SENTINELS: usize = 3;

/// The port of sentinel `index`.
pub(super) fn sentinel_port(index: usize) -> u16 {
    26000 + index as u16
}

/// The configuration the admin target's reloads hand the engine: the servers of `universe` (addresses) picked by
/// the bits of `mask` (at least one), rotated by `rotate`, in `mode`, with the `sentinel` object of the running
/// configuration (a reload cannot change it).
pub(super) fn reload_config(
    universe: &[String],
    mask: u8,
    rotate: u8,
    reads_to_slaves: bool,
    sentinel: Option<&str>,
) -> Config {
    let mut picked: Vec<&String> =
        universe.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, s)| s).collect();
    if picked.is_empty() {
        picked.push(&universe[usize::from(mask) % universe.len()]);
    }
    let len = picked.len();
    picked.rotate_left(usize::from(rotate) % len);
    let list: Vec<String> = picked
        .iter()
        .map(|address| {
            let (host, port) = address.rsplit_once(':').unwrap_or(("127.0.0.1", "7000"));
            format!("{{\"host\": \"{host}\", \"port\": {port}}}")
        })
        .collect();
    let json = format!(
        "{{\"servers\": [{}], \"mode\": \"{}\", \"check_period\": 100, \"down_after\": 300, \"hold_ms\": 500{}}}",
        list.join(","),
        if reads_to_slaves { "readsToSlaves" } else { "allToMaster" },
        sentinel.map(|s| format!(", \"sentinel\": {s}")).unwrap_or_default(),
    );
    Config::from_json(&json).expect("the harness writes valid configurations")
}

/// Commands the fuzzer may send by number (as well as raw bytes): one of each kind of handling.
pub(super) const COMMANDS: &[&str] = &[
    "PING",
    "GET",
    "SET",
    "MGET",
    "DEL",
    "INCR",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SELECT",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PSUBSCRIBE",
    "MONITOR",
    "BLPOP",
    "QUIT",
    "RESET",
    "HELLO",
    "AUTH",
    "CLIENT",
    "INFO",
    "REPLICAOF",
    "CONFIG",
    "PUBLISH",
    "ECHO",
    "EVAL",
    "WAIT",
    "SHUTDOWN",
    "FLUSHALL",
    "NOSUCHCOMMAND",
];

pub(super) const ARGS: &[&str] =
    &["k", "0", "1", "2", "ch", "SETNAME", "TRACKING", "on", "off", "NO", "ONE", "3", "v", "SET"];

/// How many node addresses the cluster target knows at first (ports 7000 and up); a node's `CLUSTER NODES`
/// answer may name more.
pub(super) const CLUSTER_UNIVERSE: usize = 8;

/// Commands the cluster target's clients send with keys of [`CLUSTER_KEYS`]: single-key, split by slot, refused
/// across slots, keyless, whole-keyspace, refused in cluster mode, and sharded pub/sub (the keys as channels).
pub(super) const CLUSTER_COMMANDS: &[&str] = &[
    "GET",
    "SET",
    "INCR",
    "MGET",
    "MSET",
    "DEL",
    "EXISTS",
    "TOUCH",
    "UNLINK",
    "RENAME",
    "MSETNX",
    "EVAL",
    "DBSIZE",
    "PING",
    "SCAN",
    "FLUSHALL",
    "MULTI",
    "CLUSTER",
    "SSUBSCRIBE",
    "SUNSUBSCRIBE",
    "SPUBLISH",
];

/// Keys for [`CLUSTER_COMMANDS`]: some share a hash tag.
pub(super) const CLUSTER_KEYS: &[&str] = &["{a}1", "{a}2", "{b}1", "k", "x", "y", "{a}n", "foo"];

/// The engine's configuration, decoded first.
#[derive(Arbitrary, Debug)]
pub(super) struct Setup {
    servers: u8,
    reads_to_slaves: bool,
    pool_size: u8,
    max_pipeline: u8,
    max_clients: u8,
    hold_budget: u8,
    small_limits: bool,
}

impl Setup {
    /// Whether reads are split.
    pub(super) fn reads_to_slaves(&self) -> bool {
        self.reads_to_slaves
    }

    /// The configuration it describes, written as JSON so that the configuration parser is fuzzed along; with
    /// `sentinel` (the JSON of the `sentinel` object), in Sentinel mode, where the server list may be empty.
    pub(super) fn config(&self, sentinel: Option<&str>) -> Config {
        let servers = match sentinel {
            Some(_) => usize::from(self.servers % 3),
            None => usize::from(self.servers % 3) + 1,
        };
        let list: Vec<String> = (0..servers)
            .map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", crate::testkit::port_of(i)))
            .collect();
        let limits = if self.small_limits { ", \"max_bulk_len\": 64, \"max_request_len\": 1024" } else { "" };
        let sentinel = sentinel.map(|s| format!(", \"sentinel\": {s}")).unwrap_or_default();
        // An empty list is refused: Sentinel mode without servers leaves the field out.
        let servers = if list.is_empty() { String::new() } else { format!("\"servers\": [{}], ", list.join(",")) };
        let json = format!(
            "{{{servers}\"mode\": \"{}\", \"check_period\": 100, \"down_after\": 300, \"hold_ms\": 500, \
             \"pool_size\": {}, \"max_pipeline\": {}, \"max_clients\": {}, \"hold_max_bytes\": {}, \
             \"client_output_limit\": 1024{limits}{sentinel}}}",
            if self.reads_to_slaves { "readsToSlaves" } else { "allToMaster" },
            self.pool_size % 3 + 1,
            self.max_pipeline % 8 + 1,
            self.max_clients % 6 + 1,
            usize::from(self.hold_budget % 10) * 256,
        );
        Config::from_json(&json).expect("the harness writes valid configurations")
    }
}

impl Setup {
    /// The cluster target's configuration: cluster mode seeded with 1 to 3 nodes (ports 7000 and up), refreshing
    /// every 100 ms; returns the number of seeds too.
    pub(super) fn cluster_config(&self) -> (usize, Config) {
        let seeds = usize::from(self.servers % 3) + 1;
        let list: Vec<String> = (0..seeds)
            .map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", crate::testkit::port_of(i)))
            .collect();
        let limits = if self.small_limits { ", \"max_bulk_len\": 64, \"max_request_len\": 1024" } else { "" };
        let json = format!(
            "{{\"cluster\": {{\"seeds\": [{}], \"refresh_period\": 100}}, \"check_period\": 100, \
             \"down_after\": 300, \"hold_ms\": 500, \"pool_size\": {}, \"max_pipeline\": {}, \"max_clients\": {}, \
             \"hold_max_bytes\": {}, \"client_output_limit\": 1024{limits}}}",
            list.join(","),
            self.pool_size % 3 + 1,
            self.max_pipeline % 8 + 1,
            self.max_clients % 6 + 1,
            usize::from(self.hold_budget % 10) * 256,
        );
        (seeds, Config::from_json(&json).expect("the harness writes valid configurations"))
    }
}

/// The Sentinel target's `sentinel` object, decoded from one byte after the [`Setup`]: 1 to [`MAX_SENTINELS`]
/// sentinels (bits 0-1) and a `majority_lost_after` short enough for a fuzzer to pass (bits 2-3: 150, 400 or
/// 1000 ms).
pub(super) fn sentinel_json(byte: u8) -> (usize, String) {
    let count = usize::from(byte & 3) % MAX_SENTINELS + 1;
    let lost_after = [150, 400, 1000][usize::from(byte >> 2 & 3) % 3];
    let list: Vec<String> =
        (0..count).map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", sentinel_port(i))).collect();
    let json = format!(
        "{{\"sentinels\": [{}], \"master_name\": \"mymaster\", \"majority_lost_after\": {lost_after}}}",
        list.join(",")
    );
    (count, json)
}

/// One step of the engine scenario; decoded by [`Op::decode`] from a simple byte format (a tag byte, then its
/// fields, byte strings as a length byte and the bytes) so that seeds are easy to write by hand.
#[derive(Debug)]
pub(super) enum Op {
    Accept,
    ClientBytes {
        client: u8,
        data: Vec<u8>,
    },
    ClientCommand {
        client: u8,
        command: u8,
        args: Vec<u8>,
        inline: bool,
    },
    ClientClosed {
        client: u8,
    },
    WriteBlocked {
        client: u8,
    },
    Drained {
        client: u8,
    },
    Advance {
        ms: u16,
    },
    Timeout,
    Connected {
        backend: u8,
    },
    ConnectFailed {
        backend: u8,
    },
    BackendClosed {
        backend: u8,
    },
    BackendBytes {
        backend: u8,
        data: Vec<u8>,
    },
    BackendAnswer {
        backend: u8,
        count: u8,
        flavor: u8,
    },
    Stale {
        conn: u8,
        kind: u8,
    },
    /// `PROXY ADD` of a server of the universe, from the admin client.
    AdminAdd {
        server: u8,
    },
    /// `PROXY REMOVE` of a server of the universe.
    AdminRemove {
        server: u8,
    },
    /// `PROXY FAILOVER`, to a server of the universe or (high bit) to whichever the rules pick.
    AdminFailover {
        server: u8,
    },
    /// A reload with the servers of the universe picked by `mask`, rotated by `rotate` (added, removed,
    /// reordered, re-addressed: a server replaced by another address).
    Reload {
        mask: u8,
        rotate: u8,
        flip_mode: bool,
    },
    /// `SCAN` continuing the client's last cursor (or 0, or a made-up one).
    ClientScan {
        client: u8,
        cursor: u8,
    },
    /// `ECHO` of a token that numbers the client's requests: its replies must come back in that order.
    ClientEcho {
        client: u8,
    },
    /// What sentinel `sentinel` (or, high bit, every sentinel) answers from now on: the master of the universe it
    /// names (`master` mod 5; 4: it does not know the name), the replicas it lists (the low nibble of `replicas`,
    /// a mask of the universe) and which of them are healthy (the high nibble); `style` bit 0 names them all
    /// `localhost` instead of `127.0.0.1` (re-addressed), bit 1 promotes the named master (its `INFO` says
    /// `role:master`, the other servers become its replicas), as Sentinel's failover does.
    SentinelSays {
        sentinel: u8,
        master: u8,
        replicas: u8,
        style: u8,
    },
    /// Sentinel `sentinel` publishes an event (`kind` picks which, malformed ones included) on its subscription.
    SentinelPush {
        sentinel: u8,
        kind: u8,
    },
    /// Sentinel `sentinel` stops (its connections close, new ones are refused), or starts again.
    SentinelToggle {
        sentinel: u8,
    },
    /// `PROXY STATUS`, `PROXY SERVERS` or `PROXY RELOAD` from the admin client: the commands Sentinel mode keeps.
    AdminQuery {
        which: u8,
    },
    /// What the cluster's nodes answer to `CLUSTER NODES` and `CLUSTER INFO` from now on: the primaries (a mask of
    /// the cluster universe), the shape of the text and the epochs (see `fuzzing::cluster::ClusterModel`).
    ClusterSays {
        primaries: u8,
        style: u8,
        epochs: u8,
    },
    /// Node `node` answers these bytes to `CLUSTER NODES` from now on (until the next `ClusterSays`).
    ClusterRaw {
        node: u8,
        data: Vec<u8>,
    },
    /// The next `count` requests on backend `backend` are bounced as `flavor` says (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `CLUSTERDOWN` ...), a redirection naming address `target`.
    BackendRedirect {
        backend: u8,
        count: u8,
        flavor: u8,
        target: u8,
    },
    /// Command `command` of the cluster commands with the cluster keys `keys` picks.
    ClientKeys {
        client: u8,
        command: u8,
        keys: Vec<u8>,
    },
}

impl Op {
    pub(super) fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        Op::decode_fields(tag, u)
    }

    /// The operation `tag` names (mod 14) and its fields.
    fn decode_fields(tag: u8, u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let byte = |u: &mut Unstructured<'_>| u.arbitrary::<u8>();
        let bytes = |u: &mut Unstructured<'_>| -> arbitrary::Result<Vec<u8>> {
            let len = u.arbitrary::<u8>()?;
            Ok(u.bytes(usize::from(len).min(u.len()))?.to_vec())
        };
        Ok(match tag % 14 {
            0 => Op::Accept,
            1 => Op::ClientBytes { client: byte(u)?, data: bytes(u)? },
            2 => Op::ClientCommand { client: byte(u)?, command: byte(u)?, args: bytes(u)?, inline: u.arbitrary()? },
            3 => Op::ClientClosed { client: byte(u)? },
            4 => Op::WriteBlocked { client: byte(u)? },
            5 => Op::Drained { client: byte(u)? },
            6 => Op::Advance { ms: u.arbitrary()? },
            7 => Op::Timeout,
            8 => Op::Connected { backend: byte(u)? },
            9 => Op::ConnectFailed { backend: byte(u)? },
            10 => Op::BackendClosed { backend: byte(u)? },
            11 => Op::BackendBytes { backend: byte(u)?, data: bytes(u)? },
            12 => Op::BackendAnswer { backend: byte(u)?, count: byte(u)?, flavor: byte(u)? },
            _ => Op::Stale { conn: byte(u)?, kind: byte(u)? },
        })
    }

    /// Like [`Op::decode`], with the admin operations, reloads, `SCAN` and `ECHO` among the tags.
    pub(super) fn decode_with_admin(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        Op::decode_admin_tag(tag, u)
    }

    /// The operation `tag` names (mod 22) among the admin target's, and its fields.
    fn decode_admin_tag(tag: u8, u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let byte = |u: &mut Unstructured<'_>| u.arbitrary::<u8>();
        Ok(match tag % 22 {
            14 => Op::AdminAdd { server: byte(u)? },
            15 => Op::AdminRemove { server: byte(u)? },
            16 => Op::AdminFailover { server: byte(u)? },
            17 => Op::Reload { mask: byte(u)?, rotate: byte(u)?, flip_mode: u.arbitrary()? },
            18 | 19 => Op::ClientScan { client: byte(u)?, cursor: byte(u)? },
            20 | 21 => Op::ClientEcho { client: byte(u)? },
            other => Op::decode_fields(other, u)?,
        })
    }

    /// Like [`Op::decode`], with what the cluster's nodes say, bounced requests, commands with keys and numbered
    /// `ECHO`s among the tags.
    pub(super) fn decode_with_cluster(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        let byte = |u: &mut Unstructured<'_>| u.arbitrary::<u8>();
        let bytes = |u: &mut Unstructured<'_>| -> arbitrary::Result<Vec<u8>> {
            let len = u.arbitrary::<u8>()?;
            Ok(u.bytes(usize::from(len).min(u.len()))?.to_vec())
        };
        Ok(match tag % 21 {
            14 => Op::ClusterSays { primaries: byte(u)?, style: byte(u)?, epochs: byte(u)? },
            15 => Op::ClusterRaw { node: byte(u)?, data: bytes(u)? },
            16 | 17 => Op::BackendRedirect { backend: byte(u)?, count: byte(u)?, flavor: byte(u)?, target: byte(u)? },
            18 | 19 => Op::ClientKeys { client: byte(u)?, command: byte(u)?, keys: bytes(u)? },
            20 => Op::ClientEcho { client: byte(u)? },
            other => Op::decode_fields(other, u)?,
        })
    }

    /// Like [`Op::decode_with_admin`], with the sentinels' answers, events and outages among the tags.
    pub(super) fn decode_with_sentinels(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        let byte = |u: &mut Unstructured<'_>| u.arbitrary::<u8>();
        Ok(match tag % 27 {
            22 | 23 => Op::SentinelSays { sentinel: byte(u)?, master: byte(u)?, replicas: byte(u)?, style: byte(u)? },
            24 => Op::SentinelPush { sentinel: byte(u)?, kind: byte(u)? },
            25 => Op::SentinelToggle { sentinel: byte(u)? },
            26 => Op::AdminQuery { which: byte(u)? },
            other => Op::decode_admin_tag(other, u)?,
        })
    }
}
