//! A real Redis Cluster for the cluster-mode tests: 3 primaries and 3 replicas of `redis-server --cluster-enabled
//! yes` on free loopback ports, joined with `redis-cli --cluster create`, each node killed by PID on drop.
//!
//! Every node runs with a 500 ms `cluster-node-timeout` (a SIGKILLed primary is replaced in about 1.5 s) and no
//! diskless-sync delay. Its cluster bus port is a second free port (`--cluster-port`), not Redis's default
//! port + 10000, which could fall in Linux's ephemeral range or on a port another test was just given. A node's
//! `nodes.conf` and log (`--loglevel notice`: elections, failovers, state changes) are in the cluster's scratch
//! directory, kept and named on stderr when a test panics.
//!
//! A cluster may want a password ([`RedisCluster::start_with_password`]) or talk TLS
//! ([`RedisCluster::start_tls`]); the helpers here log in, and reach a TLS cluster's nodes on plain ports of their
//! own, so that every helper works the same on every kind.
//!
//! The helpers ask the nodes, never a cached map: [`RedisCluster::owner_of_slot`] trusts each node's claim on its
//! own slots (its `myself` line), the highest config epoch winning, and [`RedisCluster::settled`] waits until
//! every live node agrees on one map.

use crate::tls::Certs;
use crate::{free_port, scratch_dir, wait_until, RedisServer, Reply, RespConn};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The number of hash slots.
pub const SLOTS: usize = 16_384;

/// Each node's `cluster-node-timeout`, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 500;

/// How long the helpers wait for the cluster to form, promote, or settle after a change.
pub const SETTLE: Duration = Duration::from_secs(30);

/// One node as a `CLUSTER NODES` line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node id (40 hex characters).
    pub id: String,
    /// Its client port (0 for a node without an address yet).
    pub port: u16,
    /// Its flags: `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, `nofailover` ...
    pub flags: Vec<String>,
    /// The id of its primary when it is a replica.
    pub master_id: Option<String>,
    /// Its config epoch.
    pub config_epoch: u64,
    /// Whether the link to it is up (`connected`).
    pub connected: bool,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Open slots, as shown: `[slot->-target-id]` (migrating) or `[slot-<-source-id]` (importing).
    pub open_slots: Vec<String>,
}

impl NodeView {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Whether it is a primary.
    pub fn is_primary(&self) -> bool {
        self.has_flag("master")
    }

    /// Whether the line is the answering node's own.
    pub fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }

    /// Whether the line shows trouble: `fail`, `fail?`, `handshake` or `noaddr`.
    pub fn is_troubled(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
    }

    /// Whether `slot` is in one of its ranges.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Parses the text of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 8, "short CLUSTER NODES line: {line:?}");
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok());
            let mut slots = Vec::new();
            let mut open_slots = Vec::new();
            for s in &f[8..] {
                if s.starts_with('[') {
                    open_slots.push(s.to_string());
                } else if let Some((a, b)) = s.split_once('-') {
                    slots.push((a.parse().expect("slot"), b.parse().expect("slot")));
                } else {
                    let n = s.parse().expect("slot");
                    slots.push((n, n));
                }
            }
            NodeView {
                id: f[0].to_string(),
                port: port.unwrap_or(0),
                flags: f[2].split(',').map(str::to_string).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                config_epoch: f[6].parse().unwrap_or(0),
                connected: f[7] == "connected",
                slots,
                open_slots,
            }
        })
        .collect()
}

/// Runs `redis-cli` with `args`, its output to `log` (a reshard prints a line per slot, more than a pipe holds),
/// killed after `timeout`; panics with that output unless it exits 0. Returns the output.
pub fn redis_cli(args: &[&str], log: &Path, timeout: Duration) -> String {
    let out = std::fs::File::create(log).expect("create redis-cli log");
    let err = out.try_clone().expect("clone redis-cli log");
    let mut child =
        Command::new("redis-cli").args(args).stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): the cluster tests need it. \
                 Install it with `apt-get install redis-server redis-tools`"
            )
        });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redis-cli") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) if s.success() => output,
        Some(s) => panic!("redis-cli {args:?} failed ({s}):\n{output}"),
        None => panic!("redis-cli {args:?} did not finish within {timeout:?}:\n{output}"),
    }
}

struct Node {
    server: RedisServer,
    /// Its TLS port, in a TLS cluster.
    tls_port: Option<u16>,
    id: String,
    /// Set by [`RedisCluster::kill`]: when, and the slots it served then.
    killed: Option<(Instant, Vec<u16>)>,
}

/// What the nodes ask of their clients, set when the cluster starts.
#[derive(Clone, Copy)]
enum Access<'a> {
    /// Nothing: plain TCP, no password.
    Open,
    /// This password (`--requirepass`).
    Password(&'a str),
    /// TLS with these certificates, on a port of its own (the plain port stays, for the harness).
    Tls(&'a Certs),
}

/// A running Redis Cluster; see the module documentation.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// The nodes' password, if they want one.
    password: Option<String>,
    /// What `redis-cli` needs to reach the nodes: `-a password` or `--tls --cacert ca.crt`.
    cli_access: Vec<String>,
}

impl RedisCluster {
    /// Starts 3 primaries and 3 replicas and waits until the cluster is ready (see [`RedisCluster::ready`]).
    pub fn start() -> RedisCluster {
        Self::start_with(&[])
    }

    /// Like [`RedisCluster::start`], every node started with `extra_args` too (e.g.
    /// `["--cluster-require-full-coverage", "no"]`).
    pub fn start_with(extra_args: &[&str]) -> RedisCluster {
        Self::launch(extra_args, Access::Open)
    }

    /// Like [`RedisCluster::start`], every node wanting `password` from its clients and its replicas giving it to
    /// their primary (`--requirepass`, `--masterauth`). The helpers here, and `redis-cli`, log in with it.
    pub fn start_with_password(password: &str) -> RedisCluster {
        Self::launch(&[], Access::Password(password))
    }

    /// Like [`RedisCluster::start`], the nodes speaking TLS with `certs`' server certificate: to clients on a TLS
    /// port of their own (`--tls-port`, see [`RedisCluster::tls_port`]), to each other on the cluster bus
    /// (`--tls-cluster yes`) and for replication (`--tls-replication yes`); clients need no certificate.
    ///
    /// Each node keeps a plain port too (its port here), which only the helpers use. A node tells a client that
    /// came over TLS the TLS ports (`CLUSTER NODES`, `MOVED`, ...) and a plain client the plain ones.
    pub fn start_tls(certs: &Certs) -> RedisCluster {
        Self::launch(&[], Access::Tls(certs))
    }

    fn launch(extra_args: &[&str], access: Access<'_>) -> RedisCluster {
        // Fail on a missing redis-cli before starting anything.
        if let Err(e) = Command::new("redis-cli").arg("--version").output() {
            panic!(
                "cannot run redis-cli ({e}): the cluster tests need it. \
                 Install it with `apt-get install redis-server redis-tools`"
            );
        }
        let dir = scratch_dir("redis-cluster");
        let started = Instant::now();
        let timeout = NODE_TIMEOUT_MS.to_string();
        let tls_files = match access {
            Access::Tls(certs) => ["server.crt", "server.key", "ca.crt"].map(|f| certs.path(f)),
            _ => Default::default(),
        };
        let mut nodes = Vec::new();
        for i in 0..6 {
            let bus_port = free_port().to_string();
            let tls_port = matches!(access, Access::Tls(_)).then(free_port);
            let tls_port_text = tls_port.map(|p| p.to_string()).unwrap_or_default();
            let conf = dir.join(format!("nodes-{i}.conf")).display().to_string();
            let log = dir.join(format!("node-{i}.log")).display().to_string();
            let mut args =
                vec!["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-port", &bus_port];
            args.extend(["--cluster-node-timeout", &timeout, "--repl-diskless-sync-delay", "0"]);
            args.extend(["--appendonly", "no", "--save", "", "--loglevel", "notice", "--logfile", &log]);
            match access {
                Access::Open => {}
                Access::Password(password) => args.extend(["--requirepass", password, "--masterauth", password]),
                Access::Tls(_) => {
                    let [cert, key, ca] = &tls_files;
                    args.extend(["--tls-port", &tls_port_text, "--tls-cert-file", cert, "--tls-key-file", key]);
                    args.extend(["--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]);
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                }
            }
            args.extend_from_slice(extra_args);
            let server = RedisServer::start_with(&args);
            nodes.push(Node { server, tls_port, id: String::new(), killed: None });
        }
        let (password, cli_access) = match access {
            Access::Open => (None, vec![]),
            Access::Password(password) => {
                (Some(password.to_string()), ["-a", password, "--no-auth-warning"].map(String::from).to_vec())
            }
            Access::Tls(_) => (None, vec!["--tls".to_string(), "--cacert".to_string(), tls_files[2].clone()]),
        };
        let mut cluster = RedisCluster { nodes, dir, password, cli_access };
        for i in 0..cluster.nodes.len() {
            let port = cluster.nodes[i].server.port;
            cluster.nodes[i].id = match cluster.connect(port).call(&[b"CLUSTER", b"MYID"]) {
                Reply::Bulk(Some(id)) => String::from_utf8(id).expect("node id"),
                other => panic!("CLUSTER MYID on :{port}: {other:?}"),
            };
        }
        let up = started.elapsed();
        // Joined the way an operator would: on the ports clients use (TLS ones in a TLS cluster).
        let addresses: Vec<String> =
            cluster.ports().iter().map(|p| format!("127.0.0.1:{}", cluster.client_port(*p))).collect();
        let mut args: Vec<&str> = cluster.cli_access.iter().map(String::as_str).collect();
        args.extend(["--cluster", "create"]);
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        redis_cli(&args, &cluster.dir.join("create.log"), Duration::from_secs(60));
        let created = started.elapsed();
        cluster.wait(SETTLE, "ready", Self::ready_problem);
        eprintln!(
            "redis cluster {:?}: 6 nodes up in {} ms, `redis-cli --cluster create` took {} ms, ready {} ms after \
             (total {} ms)",
            cluster.ports(),
            up.as_millis(),
            (created - up).as_millis(),
            (started.elapsed() - created).as_millis(),
            started.elapsed().as_millis()
        );
        cluster
    }

    /// Every node's port, live or killed, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.server.port).collect()
    }

    /// The ports of the nodes running now.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.server.pid().is_some()).map(|n| n.server.port).collect()
    }

    /// The TLS port of the node on `port`, in a TLS cluster (see [`RedisCluster::start_tls`]).
    pub fn tls_port(&self, port: u16) -> Option<u16> {
        self.node(port).tls_port
    }

    /// The port the clients of the node on `port` use: its TLS port in a TLS cluster, else `port`.
    fn client_port(&self, port: u16) -> u16 {
        self.tls_port(port).unwrap_or(port)
    }

    /// The proxy config members for this cluster: `"cluster": {"seeds": [every node], "refresh_period": ...}`
    /// (a TLS cluster's nodes on their TLS ports).
    pub fn proxy_fields(&self, refresh_period_ms: u64) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, self.client_port(*p)))
            .collect();
        format!(r#""cluster": {{"seeds": [{}], "refresh_period": {refresh_period_ms}}}"#, seeds.join(", "))
    }

    /// The directory of the nodes' logs and `nodes.conf` files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.server.port == port).unwrap_or_else(|| panic!("no cluster node on :{port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.server.port == port).unwrap_or_else(|| panic!("no cluster node on :{port}"))
    }

    /// A connection to the node on `port` (its plain port), logged in when the cluster has a password.
    pub fn connect(&self, port: u16) -> RespConn {
        let mut conn = RespConn::connect(port);
        if let Some(password) = &self.password {
            assert_eq!(conn.call(&[b"AUTH", password.as_bytes()]), Reply::Status("OK".into()), "AUTH on :{port}");
        }
        conn
    }

    /// Like [`RedisCluster::connect`], with a 1 s read timeout; None when the node does not answer.
    fn try_connect(&self, port: u16) -> Option<RespConn> {
        let mut conn = RespConn::try_connect(port, Duration::from_secs(1)).ok()?;
        if let Some(password) = &self.password {
            if conn.try_call(&[b"AUTH", password.as_bytes()]).ok()? != Reply::Status("OK".into()) {
                return None;
            }
        }
        Some(conn)
    }

    /// `CLUSTER NODES` as the node on `port` sees it; None when it does not answer within a second.
    pub fn cluster_nodes(&self, port: u16) -> Option<Vec<NodeView>> {
        match self.try_connect(port)?.try_call(&[b"CLUSTER", b"NODES"]).ok()? {
            Reply::Bulk(Some(text)) => Some(parse_cluster_nodes(&String::from_utf8_lossy(&text))),
            _ => None,
        }
    }

    /// `cluster_state` from the `CLUSTER INFO` of the node on `port` (`ok` or `fail`); None when it does not
    /// answer.
    pub fn cluster_state(&self, port: u16) -> Option<String> {
        self.info_line(port, &[b"CLUSTER", b"INFO"], "cluster_state")
    }

    /// The value of the `name:value` line of the text that `command` answers on the node on `port`.
    fn info_line(&self, port: u16, command: &[&[u8]], name: &str) -> Option<String> {
        let Reply::Bulk(Some(text)) = self.try_connect(port)?.try_call(command).ok()? else { return None };
        let text = String::from_utf8_lossy(&text).into_owned();
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|v| v.trim().to_string())
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> &str {
        &self.node(port).id
    }

    /// The port of the node with id `id`.
    pub fn port_of(&self, id: &str) -> u16 {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no cluster node with id {id}")).server.port
    }

    /// What the node on `port` says of itself (its `myself` line), if it answers.
    pub fn own_view(&self, port: u16) -> Option<NodeView> {
        self.cluster_nodes(port)?.into_iter().find(NodeView::is_myself)
    }

    /// The live nodes that say they are primaries, by port.
    pub fn primaries(&self) -> Vec<u16> {
        self.live_ports().into_iter().filter(|p| self.own_view(*p).is_some_and(|v| v.is_primary())).collect()
    }

    /// The live node that says it replicates the node on `primary`; panics when none does.
    pub fn replica_of(&self, primary: u16) -> u16 {
        let id = self.node_id(primary).to_string();
        self.live_ports()
            .into_iter()
            .find(|p| self.own_view(*p).is_some_and(|v| v.master_id.as_deref() == Some(id.as_str())))
            .unwrap_or_else(|| panic!("no live replica of :{primary}; the cluster:\n{}", self.describe()))
    }

    /// The primary serving `slot`, by the claims of the live primaries on their own slots (the highest config epoch
    /// wins, as in Redis). During a migration that is the source, until the slot is handed over.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        let owner = self
            .live_ports()
            .into_iter()
            .filter_map(|p| self.own_view(p))
            .filter(|v| v.is_primary() && v.serves(slot))
            .max_by_key(|v| v.config_epoch);
        match owner {
            Some(v) => v.port,
            None => panic!("no live primary claims slot {slot}; the cluster:\n{}", self.describe()),
        }
    }

    /// The slot map, slot by slot: the port of the primary serving each, by [`RedisCluster::owner_of_slot`]'s rule.
    pub fn slot_map(&self) -> Vec<u16> {
        let mut map = vec![0u16; SLOTS];
        let mut epochs = vec![0u64; SLOTS];
        for view in self.live_ports().into_iter().filter_map(|p| self.own_view(p)).filter(NodeView::is_primary) {
            for &(a, b) in &view.slots {
                for slot in a..=b {
                    if map[slot as usize] == 0 || view.config_epoch > epochs[slot as usize] {
                        map[slot as usize] = view.port;
                        epochs[slot as usize] = view.config_epoch;
                    }
                }
            }
        }
        if let Some(slot) = map.iter().position(|p| *p == 0) {
            panic!("no live primary claims slot {slot}; the cluster:\n{}", self.describe());
        }
        map
    }

    /// The slots the primary on `port` says it serves, in ascending order (`redis-cli --cluster reshard` moves a
    /// source's lowest slots first).
    pub fn slots_of(&self, port: u16) -> Vec<u16> {
        let view = self.own_view(port).unwrap_or_else(|| panic!(":{port} does not answer CLUSTER NODES"));
        view.slots.iter().flat_map(|&(a, b)| a..=b).collect()
    }

    fn any_live(&self) -> u16 {
        *self.live_ports().first().expect("a live cluster node")
    }

    /// The slot of `key`, by `CLUSTER KEYSLOT` on a live node.
    pub fn key_slot(&self, key: &[u8]) -> u16 {
        self.key_slots(&[key])[0]
    }

    /// The slots of `keys`, by one pipeline of `CLUSTER KEYSLOT` on a live node.
    pub fn key_slots(&self, keys: &[&[u8]]) -> Vec<u16> {
        let mut conn = self.connect(self.any_live());
        let mut batch = Vec::new();
        for key in keys {
            batch.extend_from_slice(&crate::encode_command(&[b"CLUSTER", b"KEYSLOT", key]));
        }
        conn.send_raw(&batch);
        keys.iter()
            .map(|key| match conn.read_reply() {
                Reply::Int(slot) => slot as u16,
                other => panic!("CLUSTER KEYSLOT {:?}: {other:?}", String::from_utf8_lossy(key)),
            })
            .collect()
    }

    /// `n` keys `{prefix}:0`, `{prefix}:1` ... (skipping those whose slot fails `wanted`): the first `n` whose slot
    /// `wanted` accepts, with their slots. Panics after 200,000 candidates.
    pub fn keys_where(&self, prefix: &str, n: usize, wanted: impl Fn(u16) -> bool) -> Vec<(String, u16)> {
        let mut found = Vec::new();
        let mut next = 0usize;
        while found.len() < n {
            assert!(next < 200_000, "fewer than {n} keys {prefix}:* in the wanted slots among {next} candidates");
            let batch: Vec<String> = (next..next + 512).map(|i| format!("{prefix}:{i}")).collect();
            next += 512;
            let refs: Vec<&[u8]> = batch.iter().map(|k| k.as_bytes()).collect();
            for (key, slot) in batch.iter().zip(self.key_slots(&refs)) {
                if found.len() < n && wanted(slot) {
                    found.push((key.clone(), slot));
                }
            }
        }
        found
    }

    /// SIGKILLs the node on `port` (by PID), remembering when and which slots it served.
    pub fn kill(&mut self, port: u16) {
        let slots = if self.own_view(port).is_some_and(|v| v.is_primary()) { self.slots_of(port) } else { vec![] };
        let node = self.node_mut(port);
        node.server.kill();
        node.killed = Some((Instant::now(), slots));
    }

    /// Starts a killed node again on its port with its `nodes.conf`: it rejoins (a former primary as a replica of
    /// the one that replaced it).
    pub fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.server.restart();
        node.killed = None;
    }

    /// After [`RedisCluster::kill`] of the primary on `dead`: waits until one live node serves all its slots and
    /// the cluster has settled; prints how long after the kill each happened and returns the new primary's port.
    pub fn wait_for_promotion(&self, dead: u16) -> u16 {
        let (killed_at, slots) = self.node(dead).killed.clone().expect("wait_for_promotion after kill");
        assert!(!slots.is_empty(), ":{dead} served no slots when it was killed");
        let mut promoted = None;
        let claimed = wait_until(SETTLE, || {
            promoted = self
                .live_ports()
                .into_iter()
                .find(|p| self.own_view(*p).is_some_and(|v| v.is_primary() && slots.iter().all(|s| v.serves(*s))));
            promoted.is_some()
        });
        assert!(claimed, "no live node took over the slots of :{dead} within {SETTLE:?}:\n{}", self.describe());
        let claimed_after = killed_at.elapsed();
        self.wait(SETTLE, "settled after a promotion", Self::settled_problem);
        let new = promoted.expect("promoted");
        eprintln!(
            "redis cluster: primary :{dead} SIGKILLed; :{new} claimed its {} slots {} ms later, all nodes agreed {} ms \
             after the kill",
            slots.len(),
            claimed_after.as_millis(),
            killed_at.elapsed().as_millis()
        );
        new
    }

    /// Moves `slots` slots from the primary on `from` to the primary on `to` with `redis-cli --cluster reshard`
    /// (the source's lowest slots first), then waits until the cluster has settled. Returns the slots moved.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> Vec<u16> {
        self.wait(SETTLE, "settled before a reshard", Self::settled_problem);
        let before = self.slots_of(from);
        let started = Instant::now();
        let address = format!("127.0.0.1:{}", self.client_port(from));
        let count = slots.to_string();
        static RESHARDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RESHARDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(format!("reshard-{n}-{from}-{to}.log"));
        let mut args: Vec<&str> = self.cli_access.iter().map(String::as_str).collect();
        args.extend(["--cluster", "reshard", &address, "--cluster-from", self.node_id(from)]);
        args.extend(["--cluster-to", self.node_id(to), "--cluster-slots", &count, "--cluster-yes"]);
        redis_cli(&args, &log, Duration::from_secs(300));
        let ran = started.elapsed();
        self.wait(SETTLE, "settled after a reshard", Self::settled_problem);
        let after: BTreeSet<u16> = self.slots_of(from).into_iter().collect();
        let moved: Vec<u16> = before.into_iter().filter(|s| !after.contains(s)).collect();
        assert_eq!(moved.len(), slots, "reshard moved {} slots, not {slots}", moved.len());
        assert!(moved.iter().all(|s| self.own_view(to).is_some_and(|v| v.serves(*s))), ":{to} serves the moved slots");
        eprintln!(
            "redis cluster: resharded {slots} slots :{from} -> :{to} in {} ms, settled {} ms after",
            ran.as_millis(),
            (started.elapsed() - ran).as_millis()
        );
        moved
    }

    /// Sends `CLUSTER FAILOVER` to the replica on `replica` and waits until it is the primary, its former primary
    /// replicates it with its link up, and the cluster has settled. Returns how long that took.
    pub fn failover(&self, replica: u16) -> Duration {
        self.wait(SETTLE, "settled before a failover", Self::settled_problem);
        let old = self.port_of(
            &self.own_view(replica).and_then(|v| v.master_id).unwrap_or_else(|| panic!(":{replica} is no replica")),
        );
        let started = Instant::now();
        let reply = self.connect(replica).call(&[b"CLUSTER", b"FAILOVER"]);
        assert_eq!(reply, Reply::Status("OK".into()), "CLUSTER FAILOVER on :{replica}");
        let switched = wait_until(SETTLE, || {
            self.own_view(replica).is_some_and(|v| v.is_primary())
                && self.own_view(old).is_some_and(|v| v.master_id.as_deref() == Some(self.node_id(replica)))
        });
        assert!(switched, ":{replica} did not take over from :{old}:\n{}", self.describe());
        let took = started.elapsed();
        self.wait(SETTLE, "settled after a failover", Self::settled_problem);
        eprintln!(
            "redis cluster: CLUSTER FAILOVER :{old} -> :{replica}: roles switched in {} ms, settled {} ms after",
            took.as_millis(),
            (started.elapsed() - took).as_millis()
        );
        took
    }

    /// Freezes `slot` mid-migration from the primary on `from` to the one on `to`, as `redis-cli --cluster
    /// reshard` leaves it between its steps: `CLUSTER SETSLOT slot IMPORTING from-id` on `to`, then `MIGRATING
    /// to-id` on `from`.
    pub fn freeze_migration(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        let ok = Reply::Status("OK".into());
        let importing = [&b"CLUSTER"[..], b"SETSLOT", slot.as_bytes(), b"IMPORTING", self.node_id(from).as_bytes()];
        assert_eq!(self.connect(to).call(&importing), ok, "SETSLOT IMPORTING on :{to}");
        let migrating = [&b"CLUSTER"[..], b"SETSLOT", slot.as_bytes(), b"MIGRATING", self.node_id(to).as_bytes()];
        assert_eq!(self.connect(from).call(&migrating), ok, "SETSLOT MIGRATING on :{from}");
    }

    /// `MIGRATE`s `key` from the node on `from` to the node on `to` (as a reshard moves each key; in a TLS
    /// cluster the source reaches the target's TLS port over TLS, with the cluster's password if it has one).
    pub fn migrate_key(&self, from: u16, to: u16, key: &[u8]) {
        let to = self.client_port(to).to_string();
        let mut migrate: Vec<&[u8]> = vec![b"MIGRATE", b"127.0.0.1", to.as_bytes(), key, b"0", b"5000"];
        if let Some(password) = &self.password {
            migrate.extend([&b"AUTH"[..], password.as_bytes()]);
        }
        let reply = self.connect(from).call(&migrate);
        assert_eq!(reply, Reply::Status("OK".into()), "MIGRATE {:?} to :{to}", String::from_utf8_lossy(key));
    }

    /// Moves `slot` with its keys from the primary on `from` to the one on `to`, step by step as a reshard does
    /// (importing and migrating states, each key migrated, then the slot given to `to` on every node), and waits
    /// until the cluster has settled. Returns the new owner.
    pub fn reshard_slot(&self, slot: u16, from: u16, to: u16) -> u16 {
        self.freeze_migration(slot, from, to);
        let slot_text = slot.to_string();
        loop {
            let keys = self.connect(from).call(&[b"CLUSTER", b"GETKEYSINSLOT", slot_text.as_bytes(), b"100"]);
            let Reply::Array(Some(keys)) = keys else { panic!("GETKEYSINSLOT on :{from}: {keys:?}") };
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let Reply::Bulk(Some(key)) = key else { panic!("a key: {key:?}") };
                self.migrate_key(from, to, &key);
            }
        }
        let to_id = self.node_id(to).as_bytes().to_vec();
        // The target first, then the source, then the other primaries, as redis-cli does.
        let mut order = vec![to, from];
        order.extend(self.primaries().into_iter().filter(|p| *p != to && *p != from));
        for port in order {
            let reply = self.connect(port).call(&[b"CLUSTER", b"SETSLOT", slot_text.as_bytes(), b"NODE", &to_id]);
            assert_eq!(reply, Reply::Status("OK".into()), "SETSLOT NODE on :{port}");
        }
        self.wait(SETTLE, "settled after moving one slot", Self::settled_problem);
        self.owner_of_slot(slot)
    }

    /// Waits until every node is up and the cluster is ready (see [`RedisCluster::ready_problem`]).
    pub fn ready(&self) {
        self.wait(SETTLE, "ready", Self::ready_problem);
    }

    /// Waits until the live nodes have settled (see [`RedisCluster::settled_problem`]).
    pub fn settled(&self) {
        self.wait(SETTLE, "settled", Self::settled_problem);
    }

    fn wait(&self, timeout: Duration, what: &str, problem: fn(&Self) -> Option<String>) {
        let mut last = None;
        if !wait_until(timeout, || {
            last = problem(self);
            last.is_none()
        }) {
            panic!("the cluster was not {what} within {timeout:?}: {}\n{}", last.unwrap_or_default(), self.describe());
        }
    }

    /// Why the cluster is not ready, or None when it is: all 6 nodes run; every node says `cluster_state:ok`;
    /// every node's `CLUSTER NODES` lists the 6 nodes, none `fail`, `fail?`, `handshake` or `noaddr`, and all
    /// nodes agree on who serves which slots and who replicates whom; every replica's `master_link_status` is
    /// `up`.
    pub fn ready_problem(&self) -> Option<String> {
        if let Some(node) = self.nodes.iter().find(|n| n.server.pid().is_none()) {
            return Some(format!(":{} is not running", node.server.port));
        }
        for port in self.ports() {
            let Some(views) = self.cluster_nodes(port) else { return Some(format!(":{port} does not answer")) };
            if views.len() != self.nodes.len() {
                return Some(format!(":{port} knows {} nodes", views.len()));
            }
            if let Some(v) = views.iter().find(|v| v.is_troubled()) {
                return Some(format!(":{port} sees :{} as {}", v.port, v.flags.join(",")));
            }
        }
        self.settled_problem()
    }

    /// Why the live nodes have not settled, or None when they have: every live node says `cluster_state:ok` and
    /// shows the same map (the same primaries serving the same slots, the same replicas of them), in which every
    /// slot is served by a live primary; no live node has an open (migrating or importing) slot; every live
    /// replica of a live primary has its link up. Killed nodes may still be listed, without slots.
    pub fn settled_problem(&self) -> Option<String> {
        let live = self.live_ports();
        let mut maps = Vec::new();
        for &port in &live {
            match self.cluster_state(port) {
                Some(state) if state == "ok" => {}
                state => return Some(format!(":{port} cluster_state is {state:?}")),
            }
            let Some(views) = self.cluster_nodes(port) else { return Some(format!(":{port} does not answer")) };
            if let Some(me) = views.iter().find(|v| v.is_myself()) {
                if !me.open_slots.is_empty() {
                    return Some(format!(":{port} has open slots {:?}", me.open_slots));
                }
            }
            // The map as this node sees it: each serving primary and its slot ranges, each replica's primary.
            let map: BTreeMap<String, String> = views
                .iter()
                .filter(|v| !v.slots.is_empty() || v.master_id.is_some())
                .map(|v| (v.id.clone(), format!("{:?} {:?} {:?}", v.is_primary(), v.master_id, v.slots)))
                .collect();
            let covered: usize = views.iter().flat_map(|v| &v.slots).map(|&(a, b)| (b - a) as usize + 1).sum();
            if covered != SLOTS {
                return Some(format!(":{port} sees {covered} slots served"));
            }
            for v in views.iter().filter(|v| !v.slots.is_empty()) {
                if !v.is_primary() || v.is_troubled() || !live.iter().any(|p| self.node_id(*p) == v.id) {
                    return Some(format!(":{port} sees slots served by :{} ({})", v.port, v.flags.join(",")));
                }
            }
            maps.push((port, map));
        }
        if let Some((port, _)) = maps.iter().find(|(_, m)| *m != maps[0].1) {
            return Some(format!(":{port} and :{} disagree on the map", maps[0].0));
        }
        for &port in &live {
            let Some(me) = self.own_view(port) else { return Some(format!(":{port} does not answer")) };
            let Some(master) = me.master_id else { continue };
            if live.iter().any(|p| self.node_id(*p) == master)
                && self.info_line(port, &[b"INFO", b"replication"], "master_link_status").as_deref() != Some("up")
            {
                return Some(format!("replica :{port}'s link to its primary is not up"));
            }
        }
        None
    }

    /// Every live node's `cluster_state` and `CLUSTER NODES`, for a panic message.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for port in self.ports() {
            let Some(mut conn) = self.try_connect(port) else {
                out.push_str(&format!("--- :{port} does not answer\n"));
                continue;
            };
            let nodes = match conn.try_call(&[b"CLUSTER", b"NODES"]) {
                Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
                other => format!("{other:?}\n"),
            };
            out.push_str(&format!("--- :{port} cluster_state:{:?}\n{nodes}", self.cluster_state(port)));
        }
        out.push_str(&format!("(node logs in {})", self.dir.display()));
        out
    }

    /// The log of the node on `port`.
    pub fn log(&self, port: u16) -> String {
        let i = self.nodes.iter().position(|n| n.server.port == port).expect("a cluster node");
        std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // The nodes are killed by RedisServer's own drop; keep the logs of a failed test.
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "redis cluster logs kept in {}", self.dir.display());
        } else {
            self.nodes.clear();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
