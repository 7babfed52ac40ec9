//! What the engine reports for logs, metrics and status: [`Event`]s with a [`Level`].

use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::topology::Role;
use std::fmt;
use std::net::SocketAddr;

/// How much an event matters, for log filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong but the proxy copes.
    Warn,
    /// A state change an operator wants to see.
    Info,
    /// Detail for debugging.
    Debug,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        })
    }
}

/// Something that happened inside the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Sentinel mode: a majority of the configured sentinels names this master (now, or again).
    SentinelMajority {
        /// The master they name.
        address: ServerAddress,
        /// How many name it.
        agreeing: usize,
        /// How many sentinels are configured.
        configured: usize,
    },
    /// Sentinel mode: no majority of the sentinels answers alike; the routed master is kept until
    /// `majority_lost_after`.
    SentinelNoMajority {
        /// Sentinels that answered in time.
        answering: usize,
        /// How many must agree.
        needed: usize,
        /// How many are configured.
        configured: usize,
        /// The master kept meanwhile.
        keeping: Option<ServerAddress>,
    },
    /// Sentinel mode: a sentinel published an event; the sentinels are asked again at once.
    SentinelNotice {
        /// The sentinel.
        sentinel: ServerAddress,
        /// The channel (`+switch-master`, `+odown` ...).
        channel: String,
        /// The message.
        payload: String,
    },
    /// A connection to a server could not be made (not refused: a timeout, an unreachable network, a failed TLS
    /// handshake). Reported once per server and reason, again after the server has answered.
    ConnectFailed {
        /// The server.
        address: ServerAddress,
        /// Why, as the runtime saw it.
        reason: String,
    },
    /// Sentinel mode: a sentinel's reply made no sense or was an error; it counts as no answer.
    SentinelError {
        /// The sentinel.
        sentinel: ServerAddress,
        /// What was wrong.
        message: String,
    },
    /// A client connected.
    ClientAccepted {
        /// Its connection.
        conn: ConnId,
        /// Its address.
        peer: SocketAddr,
    },
    /// A client was turned away because `max_clients` are connected.
    ClientRejected {
        /// Its address.
        peer: SocketAddr,
    },
    /// A client left (or was closed).
    ClientClosed {
        /// Its connection.
        conn: ConnId,
    },
    /// A client sent something that is not RESP; it got the error and was closed.
    ClientProtocolError {
        /// Its connection.
        conn: ConnId,
        /// The error it was sent.
        message: String,
    },
    /// A subscribed or MONITOR client stopped reading and its queued output passed `client_output_limit`.
    ClientOutputLimit {
        /// Its connection.
        conn: ConnId,
    },
    /// A server answered a probe again after being down, busy or unreachable.
    ServerUp {
        /// The server.
        address: ServerAddress,
        /// What it was.
        was: &'static str,
    },
    /// A server counts as down.
    ServerDown {
        /// The server.
        address: ServerAddress,
        /// The evidence.
        reason: &'static str,
    },
    /// A server is alive but does not answer (a script, a slow command, a pause, a stopped process): it is not
    /// down, and requests still wait for it, until `busy_down_after`.
    ServerBusy {
        /// The server.
        address: ServerAddress,
        /// The evidence.
        evidence: &'static str,
    },
    /// A server busy for `busy_down_after` was sent `SCRIPT KILL` or `FUNCTION KILL` before counting as down.
    KillSent {
        /// The server.
        address: ServerAddress,
        /// The command sent.
        command: &'static str,
    },
    /// A server refused the proxy's credentials, or wants some and `server_auth` gives none: nothing is routed
    /// to it, and it is not counted down (it answers). Reported once until it accepts them.
    ServerAuthRefused {
        /// The server.
        address: ServerAddress,
        /// Its reply (`-WRONGPASS ...`, `-NOAUTH ...`), which holds no secret.
        reply: String,
    },
    /// A server that refused the proxy's credentials accepts them now.
    ServerAuthAccepted {
        /// The server.
        address: ServerAddress,
    },
    /// A server reported a different role (or master) than before.
    RoleSeen {
        /// The server.
        address: ServerAddress,
        /// Its role.
        role: Role,
        /// Its master as it reports it (replicas).
        master: Option<String>,
    },
    /// Writes now go to this master.
    MasterAdopted {
        /// The master.
        address: ServerAddress,
        /// Why.
        reason: &'static str,
    },
    /// Writes no longer go to this master; new requests are held until another is confirmed.
    MasterLost {
        /// The former master.
        address: ServerAddress,
        /// Why.
        reason: &'static str,
    },
    /// A failover began: `REPLICAOF NO ONE` goes to this replica.
    PromotionStarted {
        /// The chosen replica.
        address: ServerAddress,
        /// The rule that chose it.
        reason: String,
    },
    /// `REPLICAOF` was sent to a server.
    ReplicaOfSent {
        /// The server.
        address: ServerAddress,
        /// Its new master (None: `NO ONE`).
        master: Option<ServerAddress>,
        /// Why it was sent.
        reason: String,
    },
    /// A server answered a `REPLICAOF` or `SCRIPT KILL` the proxy sent.
    CommandAnswered {
        /// The server.
        address: ServerAddress,
        /// The command.
        command: &'static str,
        /// Its reply, as text.
        reply: String,
    },
    /// A backend connection failed or broke; requests in flight on it got an error.
    BackendLost {
        /// The server.
        address: ServerAddress,
        /// What happened.
        reason: String,
        /// Requests that got an error reply.
        failed_requests: usize,
    },
    /// An admin client sent a `PROXY` command.
    AdminCommand {
        /// The client.
        conn: ConnId,
        /// The command as sent.
        command: String,
    },
    /// Cluster mode: a node's slot map became the one routing follows (logged when it changed).
    ClusterMapChanged {
        /// The node that sent it.
        from: ServerAddress,
        /// Its shards (primaries serving slots).
        shards: usize,
        /// The slots some shard serves (16384 when the whole cluster is served).
        served_slots: usize,
    },
    /// Cluster mode: a node's slot map was refused; the one held stays.
    ClusterMapRefused {
        /// The node that sent it.
        from: ServerAddress,
        /// Why.
        reason: String,
    },
    /// Cluster mode: a subscribed client's node was lost, and it was subscribed again on another primary.
    SubscriberMoved {
        /// The client.
        client: ConnId,
        /// The primary it follows its channels on now.
        to: ServerAddress,
        /// How many channels and patterns it follows.
        subscriptions: usize,
    },
    /// Cluster mode: shard channels of a client, lost with their node or dropped by it when their slot moved,
    /// are followed on their slot's primary now.
    ShardChannelsMoved {
        /// The client.
        client: ConnId,
        /// The primary they are followed on now.
        to: ServerAddress,
        /// How many channels.
        channels: usize,
    },
    /// Cluster mode: a planned switchover began, `CLUSTER FAILOVER` sent to the replica `to` of primary `from`.
    ClusterSwitchoverStarted {
        /// The primary.
        from: ServerAddress,
        /// The replica asked to take over.
        to: ServerAddress,
    },
    /// A server was added (`PROXY ADD` or a reload): it is probed now, and made a replica of the master if it is
    /// not one.
    ServerAdded {
        /// The server.
        address: ServerAddress,
    },
    /// A server is being removed: it gets no new requests; it is forgotten once those in flight are answered.
    ServerRemoving {
        /// The server.
        address: ServerAddress,
    },
    /// A removed server's connections are closed and it is no longer watched.
    ServerRemoved {
        /// The server.
        address: ServerAddress,
    },
    /// A planned switchover began: new requests are held until `to` has every write `from` acknowledged.
    SwitchoverStarted {
        /// The master.
        from: ServerAddress,
        /// The replica to promote.
        to: ServerAddress,
    },
    /// A planned switchover ended, promoted or aborted (then the old master is routed again).
    SwitchoverEnded {
        /// What happened.
        outcome: String,
    },
    /// `PROXY RELOAD`: the runtime re-reads the configuration file.
    ReloadRequested,
    /// Held requests waited longer than `hold_ms` (or the hold queue was full) and got an error.
    RequestsExpired {
        /// How many.
        count: usize,
        /// Cluster mode: they waited for their slot's primary.
        cluster: bool,
    },
}

impl Event {
    /// The event's importance.
    pub fn level(&self) -> Level {
        match self {
            Event::ClientAccepted { .. } | Event::ClientClosed { .. } => Level::Debug,
            Event::ClientProtocolError { .. } | Event::ClientOutputLimit { .. } | Event::ClientRejected { .. } => {
                Level::Warn
            }
            Event::ServerAuthRefused { .. } => Level::Error,
            Event::ServerDown { .. }
            | Event::ServerBusy { .. }
            | Event::KillSent { .. }
            | Event::MasterLost { .. }
            | Event::RequestsExpired { .. }
            | Event::SentinelNoMajority { .. }
            | Event::SentinelError { .. }
            | Event::ClusterMapRefused { .. }
            | Event::ConnectFailed { .. } => Level::Warn,
            Event::BackendLost { failed_requests, .. } if *failed_requests > 0 => Level::Warn,
            Event::BackendLost { .. } => Level::Debug,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::SentinelMajority { address, agreeing, configured } => {
                write!(f, "sentinel: {agreeing} of {configured} sentinels name {address} as master")
            }
            Event::SentinelNoMajority { answering, needed, configured, keeping } => {
                let keeping = keeping.as_ref().map_or("no master".to_string(), |m| format!("master {m}"));
                write!(
                    f,
                    "sentinel: no {needed} of {configured} sentinels agree ({answering} answered); keeping {keeping} \
                     until majority_lost_after"
                )
            }
            Event::SentinelNotice { sentinel, channel, payload } => {
                write!(f, "sentinel {sentinel}: {channel} {payload}; asking the sentinels again")
            }
            Event::SentinelError { sentinel, message } => write!(f, "sentinel {sentinel}: {message}"),
            Event::ConnectFailed { address, reason } => {
                write!(
                    f,
                    "cannot connect to {address}: {reason} (not logged again until the reason changes or it answers)"
                )
            }
            Event::ClientAccepted { conn, peer } => write!(f, "client {conn} connected from {peer}"),
            Event::ClientRejected { peer } => write!(f, "client {peer} rejected: max_clients reached"),
            Event::ClientClosed { conn } => write!(f, "client {conn} closed"),
            Event::ClientProtocolError { conn, message } => write!(f, "client {conn} closed after: {message}"),
            Event::ClientOutputLimit { conn } => {
                write!(f, "client {conn} closed: it does not read and its output passed client_output_limit")
            }
            Event::ServerUp { address, was } => write!(f, "server {address} answers again (it was {was})"),
            Event::ServerDown { address, reason } => write!(f, "server {address} is down: {reason}"),
            Event::ServerBusy { address, evidence } => {
                write!(f, "server {address} is busy ({evidence}): not down, requests wait for it up to busy_down_after")
            }
            Event::KillSent { address, command } => {
                write!(f, "server {address} stayed busy for busy_down_after: sent {command} before failing it over")
            }
            Event::ServerAuthRefused { address, reply } => write!(
                f,
                "server {address} refuses the proxy's credentials ({reply}): check server_auth (username and \
                 password) against its requirepass or ACL users; nothing is routed to it until it accepts them"
            ),
            Event::ServerAuthAccepted { address } => write!(f, "server {address} accepts the proxy's credentials"),
            Event::RoleSeen { address, role, master: Some(master) } => {
                write!(f, "server {address} reports role {role} of {master}")
            }
            Event::RoleSeen { address, role, master: None } => write!(f, "server {address} reports role {role}"),
            Event::MasterAdopted { address, reason } => write!(f, "master is {address}: {reason}"),
            Event::MasterLost { address, reason } => write!(f, "master {address} lost: {reason}; holding writes"),
            Event::PromotionStarted { address, reason } => {
                write!(f, "failover: promoting {address} (REPLICAOF NO ONE); chosen by {reason}")
            }
            Event::ReplicaOfSent { address, master: Some(master), reason } => {
                write!(f, "sent REPLICAOF {} {} to {address}: {reason}", master.host, master.port)
            }
            Event::ReplicaOfSent { address, master: None, reason } => {
                write!(f, "sent REPLICAOF NO ONE to {address}: {reason}")
            }
            Event::CommandAnswered { address, command, reply } => write!(f, "{address} answered {command}: {reply}"),
            Event::BackendLost { address, reason, failed_requests } => {
                write!(
                    f,
                    "connection to {address} lost ({reason}); {failed_requests} request(s) in flight got an error"
                )
            }
            Event::RequestsExpired { count, cluster: false } => {
                write!(f, "{count} held request(s) got an error: no master in time")
            }
            Event::RequestsExpired { count, cluster: true } => {
                write!(f, "{count} held request(s) got an error: no usable primary of their slot in time")
            }
            Event::AdminCommand { conn, command } => write!(f, "admin client {conn}: {command}"),
            Event::ClusterMapChanged { from, shards, served_slots } => {
                write!(f, "cluster: slot map from {from}: {shards} shards serve {served_slots} of 16384 slots")
            }
            Event::ClusterMapRefused { from, reason } => write!(f, "cluster: map from {from} refused: {reason}"),
            Event::ServerAdded { address } => write!(f, "server {address} added: probing it"),
            Event::ServerRemoving { address } => {
                write!(f, "server {address} removing: no new requests; forgotten once those in flight are answered")
            }
            Event::ServerRemoved { address } => write!(f, "server {address} removed"),
            Event::SwitchoverStarted { from, to } => write!(
                f,
                "failover: planned switchover from {from} to {to} (PROXY FAILOVER); holding new requests until \
                 {to} has every write {from} acknowledged"
            ),
            Event::SubscriberMoved { client, to, subscriptions } => write!(
                f,
                "cluster: client {client}'s subscriber connection was lost with its node; its {subscriptions} \
                 channels and patterns are followed on {to} now"
            ),
            Event::ShardChannelsMoved { client, to, channels } => write!(
                f,
                "cluster: client {client}'s {channels} shard channel(s) lost their node or slot; they are followed \
                 on {to} now"
            ),
            Event::ClusterSwitchoverStarted { from, to } => write!(
                f,
                "cluster: planned switchover from {from} to {to} (PROXY FAILOVER): sent CLUSTER FAILOVER to {to}, \
                 which takes over once it has every write {from} acknowledged"
            ),
            Event::SwitchoverEnded { outcome } => write!(f, "failover: planned switchover {outcome}"),
            Event::ReloadRequested => write!(f, "PROXY RELOAD: re-reading the configuration file"),
        }
    }
}
