//! The proxy's configuration: a JSON file compatible with the Node.js redis-proxy's `config.json`.
//!
//! Parsing is strict: an unknown field, a missing `servers`, an empty list or a bad port is an error that names
//! the field. The Node tool's `debug`, `loggers`, `slave_balance` and `softErrorCount` are accepted and ignored,
//! each with a warning in [`Config::warnings`].

use crate::address::valid_host;
use crate::address::ServerAddress;
use crate::cluster_config::{parse_cluster, ClusterConfig};
use crate::config_fields::ConfigError;
use crate::config_fields::{address_list, error, get_bool, get_u64, port};
use crate::event::Level;
use crate::resp::Limits;
use crate::tls_config::{parse_client_tls, parse_server_tls, ClientTls, ServerTls};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Where reads go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every request goes to the master (`"allToMaster"`, the default).
    AllToMaster,
    /// Read-only commands go to healthy replicas round robin, the rest to the master (`"readsToSlaves"`).
    ReadsToSlaves,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-11-24T21:30:00.123Z INFO message` (`"text"`, the default).
    #[default]
    Text,
    /// One JSON object per line with `ts`, `level` and `msg` (`"json"`), for log shippers.
    Json,
}

/// A password or other secret: never printed (its `Debug` says `<redacted>`), compared only through digests.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret holding `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret's bytes, for the one place that must send them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a password comes from. The engine reads no file and no environment: a runtime turns `File` and `Env`
/// into `Plain` with [`Config::resolve_secrets`] before it hands the configuration over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// Given in the configuration (`"password"`), or read from where one of the others pointed.
    Plain(Secret),
    /// The SHA-256 of the password (`"password_sha256"`, 64 hex digits, as Redis ACL's `#<hash>`): client users only.
    Sha256([u8; 32]),
    /// The contents of this file, one trailing newline removed (`"password_file"`).
    File(String),
    /// The value of this environment variable (`"password_env"`).
    Env(String),
}

/// Where [`Config::resolve_secrets`] asks the runtime to read a secret from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretLocation<'a> {
    /// A file path.
    File(&'a str),
    /// An environment variable name.
    Env(&'a str),
}

/// The credentials the proxy presents to a server (`server_auth`): `AUTH [username] password`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user (None: Redis's `default` user, as with `requirepass`).
    pub username: Option<String>,
    /// The password.
    pub password: PasswordSource,
}

/// A user clients authenticate as at the proxy (`client_users`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientUser {
    /// The name for `AUTH name password`; `default` is the user a bare `AUTH password` logs into.
    pub name: String,
    /// The password.
    pub password: PasswordSource,
    /// Every write is refused with Redis's `-NOPERM` (`readonly`, default false).
    pub readonly: bool,
    /// May send the `PROXY ...` admin commands on any listener (`admin`, default false).
    pub admin: bool,
}

/// Sentinel mode (`sentinel`): Redis Sentinel decides which server is the master; the proxy only routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The sentinels to ask (`sentinel.sentinels`); a master is accepted when more than half of them name it.
    pub sentinels: Vec<ServerAddress>,
    /// The name the sentinels monitor the master under (`sentinel.master_name`).
    pub master_name: String,
    /// What the proxy logs in to the sentinels with (`sentinel.username`, optional, and one of
    /// `sentinel.password`, `password_file`, `password_env`; default: none).
    pub credentials: Option<Credentials>,
    /// How long the proxy keeps routing writes to its master while it cannot hear a majority of the sentinels
    /// (`sentinel.majority_lost_after`, ms, default 5000). Past it writes are held, then refused: a majority
    /// elsewhere may have promoted another master. Keep it below the sentinels' `down-after-milliseconds`. A
    /// silent partition is noticed only when the answers held are 2 x `check_period` old, so the bound is in fact
    /// the larger of the two (the Sentinel simulation checks that).
    pub majority_lost_after: Duration,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The Redis servers, master and replicas in any order (`servers`). In Sentinel mode it may be empty: the
    /// servers the sentinels name are added as they are learnt.
    pub servers: Vec<ServerAddress>,
    /// Sentinel mode (`sentinel`; default: off, the proxy decides by its own failover rules).
    pub sentinel: Option<SentinelConfig>,
    /// Cluster mode (`cluster`; default: off): a Redis Cluster behind the proxy, whose nodes are learnt from
    /// its seeds (`servers` is then left out).
    pub cluster: Option<ClusterConfig>,
    /// Port the proxy listens on (`listen_port`, default 9999).
    pub listen_port: u16,
    /// Address the proxy listens on (`bind_address`, default `127.0.0.1`).
    pub bind_address: String,
    /// Read routing (`mode`, default `allToMaster`).
    pub mode: Mode,
    /// How often each server is probed (`check_period`, ms, default 1000).
    pub check_period: Duration,
    /// How long a server may go without a valid reply before it counts as down (`down_after`, ms,
    /// default 3 x `check_period`).
    pub down_after: Duration,
    /// How long a server that is alive but busy (it answers `-BUSY` or `-LOADING`, or accepts new connections but
    /// does not answer: a long script, `DEBUG SLEEP`, `CLIENT PAUSE`, `SIGSTOP`) may go without a valid reply
    /// before it counts as down (`busy_down_after`, ms, default 30000, as Sentinel's `down-after-milliseconds`).
    /// At this bound a server still answering `-BUSY` is first sent `SCRIPT KILL` (or `FUNCTION KILL`) and gets
    /// `down_after` more.
    pub busy_down_after: Duration,
    /// How long a request may wait for a master before it gets an error (`hold_ms`, default
    /// `down_after` + 3 x `check_period`, enough for a failover with the same settings).
    pub hold: Duration,
    /// Most memory held requests may take, over all clients (`hold_max_bytes`, default 64 MiB); past it a
    /// request that would wait gets an error at once.
    pub hold_max_bytes: usize,
    /// Shared pipelined connections per server and protocol (`pool_size`, default 2).
    pub pool_size: usize,
    /// More shared connections per server and protocol for the clients that move large values
    /// (`large_pool_size`, default [`DEFAULT_LARGE_POOL_SIZE`]; 0: they share the `pool_size` ones).
    pub large_pool_size: usize,
    /// Most client connections at once (`max_clients`, default 10000).
    pub max_clients: usize,
    /// Worker threads serving the clients (`workers`, default 1, at most [`MAX_WORKERS`]). Above 1, one more
    /// engine probes and decides for them ([`crate::Engine::new_decider`]).
    pub workers: usize,
    /// Unanswered requests one client may have in flight before the proxy stops reading it
    /// (`max_pipeline`, default 4096).
    pub max_pipeline: usize,
    /// Bytes queued to a subscribed or MONITOR client that does not read before it is disconnected
    /// (`client_output_limit`, default 32 MiB, like Redis's pub/sub hard limit).
    pub client_output_limit: usize,
    /// Protocol bounds (`max_bulk_len` default 512 MiB, `max_request_len` default 1 GiB).
    pub limits: Limits,
    /// A replica lagging more than this behind the master gets no reads (`replica_max_lag`, ms, default 10000).
    pub replica_max_lag: Duration,
    /// In `readsToSlaves`, after a client's write its reads go to the master until a replica is known (from
    /// replication offsets) to have applied it (`read_your_writes`, default true).
    pub read_your_writes: bool,
    /// Let clients send commands that change the topology the proxy manages (`allow_topology_commands`,
    /// default false).
    pub allow_topology_commands: bool,
    /// After SIGINT/SIGTERM, the longest clients get to receive the replies they await before they are closed
    /// (`shutdown_grace`, ms, default 2000).
    pub shutdown_grace: Duration,
    /// Where the status page, `/status.json`, `/metrics` and `/health` are served over HTTP (`status_listen`,
    /// `"host:port"`; default: not served).
    pub status_listen: Option<String>,
    /// Where admin clients connect: the only listener that accepts `PROXY ...` commands (`admin_listen`,
    /// `"host:port"`; default: none, so no client may send them).
    pub admin_listen: Option<String>,
    /// How log lines are written (`log_format`: `"text"`, the default, or `"json"`, one object per line).
    pub log_format: LogFormat,
    /// Which log lines are written (`log_level`: `"error"`, `"warn"`, `"info"` or `"debug"`; default: what
    /// `RUST_LOG` names, else `"info"`). Unlike `RUST_LOG`, it changes on reload.
    pub log_level: Option<Level>,
    /// The credentials for every server (`server_auth`; default: none, nothing is sent).
    pub server_auth: Option<Credentials>,
    /// Per-server credentials that replace `server_auth` (a `"server_auth"` object inside a `servers` entry).
    pub server_auth_overrides: Vec<(ServerAddress, Credentials)>,
    /// The users clients must authenticate as (`client_users`; default: none, every client is let in).
    pub client_users: Vec<ClientUser>,
    /// Refuse to listen on an address other than loopback without `client_users` (`protected_mode`, default
    /// true, as Redis has it).
    pub protected_mode: bool,
    /// TLS to clients: a TLS listener beside the plain one (`tls`; default: none).
    pub tls: Option<ClientTls>,
    /// TLS to the Redis servers, for every connection the proxy opens to them (`server_tls`; default: plain TCP).
    pub server_tls: Option<ServerTls>,
    /// Notes about accepted-but-ignored fields, for the runtime to log.
    pub warnings: Vec<String>,
}

const LEGACY_FIELDS: &[&str] = &["debug", "loggers", "slave_balance", "softErrorCount"];

impl Config {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let root: Value = serde_json::from_str(text).map_err(|e| error(format!("not valid JSON: {e}")))?;
        let Value::Object(map) = root else {
            return Err(error("the configuration must be a JSON object"));
        };
        let mut warnings = Vec::new();
        for key in map.keys() {
            if LEGACY_FIELDS.contains(&key.as_str()) {
                warnings.push(format!("`{key}` (from the Node.js redis-proxy) is accepted and ignored"));
            } else if !KNOWN_FIELDS.contains(&key.as_str()) {
                return Err(error(format!("unknown field `{key}` (known fields: {})", KNOWN_FIELDS.join(", "))));
            }
        }
        let sentinel = parse_sentinel(map.get("sentinel"))?;
        let cluster = parse_cluster(map.get("cluster"))?;
        if cluster.is_some() && (sentinel.is_some() || map.contains_key("servers")) {
            return Err(error(
                "`cluster`: the cluster's nodes are learnt from its seeds; leave out `servers` and `sentinel`",
            ));
        }
        let (servers, server_auth_overrides) = match map.get("servers") {
            None if sentinel.is_some() || cluster.is_some() => (Vec::new(), Vec::new()),
            value => parse_servers(value)?,
        };
        let server_auth = map.get("server_auth").map(|v| parse_credentials(v, "server_auth")).transpose()?;
        let client_users = parse_client_users(map.get("client_users"))?;
        let protected_mode = get_bool(&map, "protected_mode", true)?;
        let listen_port = match map.get("listen_port") {
            None => 9999,
            Some(value) => port(value, "listen_port")?,
        };
        let bind_address = match map.get("bind_address") {
            None => "127.0.0.1".to_string(),
            Some(Value::String(s)) if valid_host(s) => s.clone(),
            Some(other) => {
                return Err(error(format!("`bind_address`: expected an IP address or a host name, got {other}")))
            }
        };
        if protected_mode && client_users.is_empty() && !is_loopback(&bind_address) {
            return Err(error(format!(
                "protected mode: `bind_address` {bind_address} is not a loopback address and no `client_users` are \
                 configured, so anyone who reaches the port could use every server behind the proxy. Configure \
                 `client_users`, bind to 127.0.0.1, or set \"protected_mode\": false if the network is trusted"
            )));
        }
        let log_format = match map.get("log_format") {
            None => LogFormat::Text,
            Some(Value::String(s)) if s == "text" => LogFormat::Text,
            Some(Value::String(s)) if s == "json" => LogFormat::Json,
            Some(other) => return Err(error(format!("`log_format`: expected \"text\" or \"json\", got {other}"))),
        };
        let log_level = match map.get("log_level") {
            None => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "error" => Level::Error,
                "warn" => Level::Warn,
                "info" => Level::Info,
                "debug" => Level::Debug,
                _ => {
                    return Err(error(format!(
                        "`log_level`: expected \"error\", \"warn\", \"info\" or \"debug\", got {s:?}"
                    )))
                }
            }),
            Some(other) => return Err(error(format!("`log_level`: expected a string, got {other}"))),
        };
        let mode = match map.get("mode") {
            None => Mode::AllToMaster,
            Some(Value::String(s)) if s == "allToMaster" => Mode::AllToMaster,
            Some(Value::String(s)) if s == "readsToSlaves" => Mode::ReadsToSlaves,
            Some(other) => {
                return Err(error(format!("`mode`: expected \"allToMaster\" or \"readsToSlaves\", got {other}")))
            }
        };
        let check_period = get_u64(&map, "check_period", 1000, 10)?;
        let down_after = get_u64(&map, "down_after", 3 * check_period, 1)?;
        let hold = get_u64(&map, "hold_ms", down_after + 3 * check_period, 0)?;
        let busy_down_after = get_u64(&map, "busy_down_after", 30_000.max(down_after), 1)?;
        if busy_down_after < down_after {
            return Err(error(format!(
                "`busy_down_after` ({busy_down_after} ms) must not be shorter than `down_after` ({down_after} ms)"
            )));
        }
        let workers = get_u64(&map, "workers", 1, 1)?;
        if workers > MAX_WORKERS as u64 {
            return Err(error(format!("`workers`: at most {MAX_WORKERS}, got {workers}")));
        }
        let workers = workers as usize;
        let defaults = Limits::default();
        let limits = Limits {
            max_bulk_len: get_u64(&map, "max_bulk_len", defaults.max_bulk_len as u64, 1)? as usize,
            max_request_len: get_u64(&map, "max_request_len", defaults.max_request_len as u64, 1024)? as usize,
            ..defaults
        };
        Ok(Config {
            servers,
            sentinel,
            cluster,
            listen_port,
            bind_address,
            mode,
            check_period: Duration::from_millis(check_period),
            down_after: Duration::from_millis(down_after),
            hold: Duration::from_millis(hold),
            busy_down_after: Duration::from_millis(busy_down_after),
            hold_max_bytes: get_u64(&map, "hold_max_bytes", 64 * 1024 * 1024, 0)? as usize,
            pool_size: get_u64(&map, "pool_size", 2, 1)? as usize,
            large_pool_size: get_u64(&map, "large_pool_size", DEFAULT_LARGE_POOL_SIZE as u64, 0)? as usize,
            max_clients: get_u64(&map, "max_clients", 10_000, 1)? as usize,
            workers,
            max_pipeline: get_u64(&map, "max_pipeline", 4096, 1)? as usize,
            client_output_limit: get_u64(&map, "client_output_limit", 32 * 1024 * 1024, 1024)? as usize,
            limits,
            replica_max_lag: Duration::from_millis(get_u64(&map, "replica_max_lag", 10_000, 0)?),
            read_your_writes: get_bool(&map, "read_your_writes", true)?,
            allow_topology_commands: get_bool(&map, "allow_topology_commands", false)?,
            shutdown_grace: Duration::from_millis(get_u64(&map, "shutdown_grace", 2000, 0)?),
            status_listen: get_listen(&map, "status_listen")?,
            admin_listen: get_listen(&map, "admin_listen")?,
            log_format,
            log_level,
            server_auth,
            server_auth_overrides,
            client_users,
            protected_mode,
            tls: parse_client_tls(map.get("tls"))?,
            server_tls: parse_server_tls(map.get("server_tls"))?,
            warnings,
        })
    }

    /// The configuration of one of `workers` worker engines: the totals (`pool_size`, `large_pool_size`,
    /// `max_clients`, `hold_max_bytes`) shared out among them, rounded down so that together they stay within
    /// them, except that each keeps at least one shared connection per server (and one for large values, if any).
    /// Without `sentinel`: the decider follows the sentinels, its workers follow the decider.
    pub fn worker_share(&self) -> Config {
        let share = |total: usize, least: usize| (total / self.workers.max(1)).max(least);
        Config {
            sentinel: None,
            pool_size: share(self.pool_size, 1),
            large_pool_size: share(self.large_pool_size, usize::from(self.large_pool_size > 0)),
            max_clients: share(self.max_clients, 1),
            hold_max_bytes: share(self.hold_max_bytes, 0),
            ..self.clone()
        }
    }

    /// The credentials the proxy presents to the server at `address`: its own override, else `server_auth`.
    pub fn server_credentials(&self, address: &ServerAddress) -> Option<&Credentials> {
        self.server_auth_overrides
            .iter()
            .find(|(server, _)| server == address)
            .map(|(_, credentials)| credentials)
            .or(self.server_auth.as_ref())
    }

    /// Replaces every `password_file` and `password_env` with the secret `read` returns for it (the runtime does
    /// the I/O; the engine never reads files or the environment). The error names the field and the location,
    /// never a secret.
    pub fn resolve_secrets<F>(&mut self, mut read: F) -> Result<(), ConfigError>
    where
        F: FnMut(SecretLocation<'_>) -> Result<Secret, String>,
    {
        let mut resolve = |source: &mut PasswordSource, field: &str| -> Result<(), ConfigError> {
            let location = match source {
                PasswordSource::File(path) => SecretLocation::File(path),
                PasswordSource::Env(name) => SecretLocation::Env(name),
                PasswordSource::Plain(_) | PasswordSource::Sha256(_) => return Ok(()),
            };
            let secret = read(location).map_err(|why| error(format!("`{field}`: {why}")))?;
            *source = PasswordSource::Plain(secret);
            Ok(())
        };
        if let Some(credentials) = &mut self.server_auth {
            resolve(&mut credentials.password, "server_auth")?;
        }
        for (address, credentials) in &mut self.server_auth_overrides {
            resolve(&mut credentials.password, &format!("server_auth of {address}"))?;
        }
        for user in &mut self.client_users {
            resolve(&mut user.password, &format!("client_users `{}`", user.name))?;
        }
        if let Some(credentials) = self.sentinel.as_mut().and_then(|s| s.credentials.as_mut()) {
            resolve(&mut credentials.password, "sentinel")?;
        }
        Ok(())
    }

    /// The first field that differs between `self` and `new` and cannot change while the proxy runs (the
    /// listeners, the connection pool's shape, the probe timing, the protocol limits, the log format).
    pub fn unchangeable_difference(&self, new: &Config) -> Option<&'static str> {
        [
            ("listen_port", self.listen_port != new.listen_port),
            ("bind_address", self.bind_address != new.bind_address),
            ("status_listen", self.status_listen != new.status_listen),
            ("admin_listen", self.admin_listen != new.admin_listen),
            ("pool_size", self.pool_size != new.pool_size),
            ("workers", self.workers != new.workers),
            ("large_pool_size", self.large_pool_size != new.large_pool_size),
            ("check_period", self.check_period != new.check_period),
            ("down_after", self.down_after != new.down_after),
            ("busy_down_after", self.busy_down_after != new.busy_down_after),
            ("max_bulk_len / max_request_len", self.limits != new.limits),
            ("shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("log_format", self.log_format != new.log_format),
            ("protected_mode", self.protected_mode != new.protected_mode),
            ("tls.port", self.tls.as_ref().map(|t| t.port) != new.tls.as_ref().map(|t| t.port)),
            ("sentinel", self.sentinel != new.sentinel),
            ("cluster", self.cluster != new.cluster),
        ]
        .into_iter()
        .find_map(|(field, differs)| differs.then_some(field))
    }

    /// A configuration with every default, for `servers` (handy for tests and embedding).
    pub fn with_servers(servers: Vec<ServerAddress>) -> Config {
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("{{\"host\": {}, \"port\": {}}}", Value::String(s.host.clone()), s.port))
            .collect();
        Config::from_json(&format!("{{\"servers\": [{}]}}", list.join(",")))
            .expect("a non-empty server list with valid ports is a valid configuration")
    }
}

/// Shared connections per server and protocol set aside for clients that move large values, when
/// `large_pool_size` is not set. Redis writes at most 64 KiB to one connection per pass of its event loop
/// (`NET_MAX_WRITES_PER_EVENT`), so large replies for many clients on few connections queue behind that limit,
/// while small requests gain from sharing few connections (fewer system calls on both sides). Measured with 50
/// clients: 8 connections in all served 100 kB GETs at 0.70 of direct Redis's rate where 2 served 0.50, but cost
/// small GETs and SETs about 7%; 16 did worse on both.
pub const DEFAULT_LARGE_POOL_SIZE: usize = 6;

/// The most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 64;

const KNOWN_FIELDS: &[&str] = &[
    "servers",
    "sentinel",
    "cluster",
    "listen_port",
    "bind_address",
    "mode",
    "check_period",
    "down_after",
    "busy_down_after",
    "hold_ms",
    "hold_max_bytes",
    "pool_size",
    "large_pool_size",
    "max_clients",
    "workers",
    "max_pipeline",
    "client_output_limit",
    "max_bulk_len",
    "max_request_len",
    "replica_max_lag",
    "read_your_writes",
    "allow_topology_commands",
    "shutdown_grace",
    "status_listen",
    "admin_listen",
    "log_format",
    "log_level",
    "server_auth",
    "client_users",
    "protected_mode",
    "tls",
    "server_tls",
];

/// Whether `host` names this machine only (a loopback IP address or `localhost`).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The one password field of an object (`password`, `password_file`, `password_env`, and with `sha256`
/// `password_sha256`).
fn parse_password(fields: &Map<String, Value>, field: &str, sha256: bool) -> Result<PasswordSource, ConfigError> {
    let names: &[&str] = if sha256 {
        &["password", "password_sha256", "password_file", "password_env"]
    } else {
        &["password", "password_file", "password_env"]
    };
    let given: Vec<&str> = names.iter().copied().filter(|n| fields.contains_key(*n)).collect();
    let [name] = given[..] else {
        return Err(error(format!("`{field}`: expected exactly one of {}", names.join(", "))));
    };
    // The value is never echoed: it may be the secret itself.
    let Some(Value::String(text)) = fields.get(name) else {
        return Err(error(format!("`{field}.{name}`: expected a string")));
    };
    match name {
        "password" => Ok(PasswordSource::Plain(Secret::new(text.as_bytes()))),
        "password_file" => Ok(PasswordSource::File(text.clone())),
        "password_env" => Ok(PasswordSource::Env(text.clone())),
        _ => parse_sha256(text)
            .map(PasswordSource::Sha256)
            .ok_or_else(|| error(format!("`{field}.password_sha256`: expected 64 hexadecimal digits"))),
    }
}

/// 64 hex digits as 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut digest = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        digest[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(digest)
}

/// A `server_auth` object.
fn parse_credentials(value: &Value, field: &str) -> Result<Credentials, ConfigError> {
    let Value::Object(fields) = value else {
        return Err(error(format!(
            "`{field}`: expected {{\"username\" (optional), \"password\" | \"password_file\" | \"password_env\"}}"
        )));
    };
    if let Some(key) =
        fields.keys().find(|k| !["username", "password", "password_file", "password_env"].contains(&k.as_str()))
    {
        return Err(error(format!("`{field}`: unknown field `{key}`")));
    }
    let username = match fields.get("username") {
        None => None,
        Some(Value::String(name)) if !name.is_empty() => Some(name.clone()),
        Some(other) => return Err(error(format!("`{field}.username`: expected a non-empty string, got {other}"))),
    };
    Ok(Credentials { username, password: parse_password(fields, field, false)? })
}

/// The `client_users` list.
fn parse_client_users(value: Option<&Value>) -> Result<Vec<ClientUser>, ConfigError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let Value::Array(list) = value else {
        return Err(error("`client_users`: expected a list of {\"name\", \"password\", ...} objects"));
    };
    let mut users: Vec<ClientUser> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = format!("client_users[{i}]");
        let Value::Object(fields) = entry else {
            return Err(error(format!("`{field}`: expected {{\"name\", \"password\", ...}}")));
        };
        const KNOWN: &[&str] =
            &["name", "password", "password_sha256", "password_file", "password_env", "readonly", "admin"];
        if let Some(key) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(error(format!("`{field}`: unknown field `{key}`")));
        }
        let name = match fields.get("name") {
            Some(Value::String(name)) if !name.is_empty() && !name.contains(|c: char| c.is_whitespace()) => {
                name.clone()
            }
            _ => return Err(error(format!("`{field}.name`: expected a user name without spaces"))),
        };
        if users.iter().any(|u| u.name == name) {
            return Err(error(format!("`{field}`: user `{name}` is listed twice")));
        }
        users.push(ClientUser {
            password: parse_password(fields, &field, true)?,
            readonly: get_bool(fields, "readonly", false).map_err(|e| error(format!("`{field}`: {e}")))?,
            admin: get_bool(fields, "admin", false).map_err(|e| error(format!("`{field}`: {e}")))?,
            name,
        });
    }
    Ok(users)
}

/// An optional `"host:port"` listen address (`[v6]:port` for IPv6).
fn get_listen(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ConfigError> {
    let Some(value) = map.get(field) else { return Ok(None) };
    let bad = || error(format!("`{field}`: expected \"host:port\" (e.g. \"127.0.0.1:9121\"), got {value}"));
    let Value::String(text) = value else { return Err(bad()) };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if !valid_host(host) || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(Some(text.clone()))
}

/// The `sentinel` object: `sentinels` (a non-empty address list), `master_name`, optional credentials and bound.
fn parse_sentinel(value: Option<&Value>) -> Result<Option<SentinelConfig>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let Value::Object(fields) = value else {
        return Err(error(format!("`sentinel`: expected {{\"sentinels\": [...], \"master_name\": ...}}, got {value}")));
    };
    const SENTINEL_FIELDS: &[&str] =
        &["sentinels", "master_name", "username", "password", "password_file", "password_env", "majority_lost_after"];
    if let Some(key) = fields.keys().find(|k| !SENTINEL_FIELDS.contains(&k.as_str())) {
        return Err(error(format!("`sentinel`: unknown field `{key}` (known: {})", SENTINEL_FIELDS.join(", "))));
    }
    let (sentinels, _) = parse_addresses(fields.get("sentinels"), "sentinel.sentinels", false)?;
    let master_name = match fields.get("master_name") {
        Some(Value::String(name)) if !name.is_empty() && !name.contains(char::is_whitespace) => name.clone(),
        Some(other) => return Err(error(format!("`sentinel.master_name`: expected a name, got {other}"))),
        None => return Err(error("`sentinel.master_name`: missing (the name in `sentinel monitor NAME ...`)")),
    };
    let username = match fields.get("username") {
        None => None,
        Some(Value::String(name)) if !name.is_empty() => Some(name.clone()),
        Some(other) => return Err(error(format!("`sentinel.username`: expected a non-empty string, got {other}"))),
    };
    let has_password = ["password", "password_file", "password_env"].iter().any(|f| fields.contains_key(*f));
    let credentials = match (username, has_password) {
        (username, true) => Some(Credentials { username, password: parse_password(fields, "sentinel", false)? }),
        (Some(_), false) => {
            return Err(error("`sentinel.username`: needs a password (or password_file, password_env)"))
        }
        (None, false) => None,
    };
    let majority_lost_after = get_u64(fields, "majority_lost_after", 5000, 1)
        .map_err(|e| error(e.0.replace("`majority_lost_after`", "`sentinel.majority_lost_after`")))?;
    Ok(Some(SentinelConfig {
        sentinels,
        master_name,
        credentials,
        majority_lost_after: Duration::from_millis(majority_lost_after),
    }))
}

/// The servers, and the credentials of those whose entry has a `server_auth` of its own.
type ServerList = (Vec<ServerAddress>, Vec<(ServerAddress, Credentials)>);

fn parse_servers(value: Option<&Value>) -> Result<ServerList, ConfigError> {
    parse_addresses(value, "servers", true)
}

/// A non-empty list of distinct `{"host", "port"}` objects in `field`, each with a `server_auth` of its own if
/// `with_auth` allows it.
fn parse_addresses(value: Option<&Value>, field: &str, with_auth: bool) -> Result<ServerList, ConfigError> {
    let extra: &[&str] = if with_auth { &["server_auth"] } else { &[] };
    let mut servers = Vec::new();
    let mut overrides = Vec::new();
    for (i, (address, fields)) in address_list(value, field, extra)?.into_iter().enumerate() {
        if let Some(value) = fields.get("server_auth") {
            overrides.push((address.clone(), parse_credentials(value, &format!("{field}[{i}].server_auth"))?));
        }
        servers.push(address);
    }
    Ok((servers, overrides))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_works_unchanged() {
        let config = Config::from_json(
            r#"{ "servers": [ {"host": "127.0.0.1", "port": 6379}, {"host": "127.0.0.1", "port": 6380} ],
                 "mode": "allToMaster", "listen_port": 9999, "bind_address": "127.0.0.1",
                 "check_period": 5000, "pool_size": 50, "debug": false }"#,
        )
        .unwrap();
        assert_eq!(config.servers.len(), 2);
        assert_eq!(config.check_period, Duration::from_millis(5000));
        assert_eq!(config.down_after, Duration::from_millis(15000));
        assert_eq!(config.pool_size, 50);
        assert_eq!(config.warnings.len(), 1);
    }

    #[test]
    fn defaults() {
        let config = Config::from_json(r#"{"servers": [{"host": "localhost", "port": 1}]}"#).unwrap();
        assert_eq!(config.listen_port, 9999);
        assert_eq!(config.bind_address, "127.0.0.1");
        assert_eq!(config.mode, Mode::AllToMaster);
        assert_eq!(config.check_period, Duration::from_millis(1000));
        assert_eq!(config.hold, Duration::from_millis(6000));
        assert_eq!((config.pool_size, config.large_pool_size), (2, DEFAULT_LARGE_POOL_SIZE));
        assert_eq!(config.workers, 1);
        let none = Config::from_json(r#"{"servers": [{"port": 1}], "large_pool_size": 0}"#).unwrap();
        assert_eq!(none.large_pool_size, 0);
        assert!(config.read_your_writes);
        assert_eq!(config.log_level, None, "RUST_LOG decides unless the file does");
        let off = Config::from_json(r#"{"servers": [{"port": 1}], "read_your_writes": false}"#).unwrap();
        assert!(!off.read_your_writes);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |text: &str| Config::from_json(text).unwrap_err().0;
        assert!(err(r#"{}"#).contains("missing field `servers`"));
        assert!(err(r#"{"servers": []}"#).contains("`servers`: the list is empty"));
        assert!(err(r#"{"servers": [{"port": 70000}]}"#).contains("`servers[0].port`"));
        assert!(err(r#"{"servers": [{"port": 1}], "listen_prot": 1}"#).contains("unknown field `listen_prot`"));
        assert!(err(r#"{"servers": [{"port": 1}], "check_period": "5"}"#).contains("`check_period`"));
        assert!(err(r#"{"servers": [{"port": 1}], "mode": "x"}"#).contains("`mode`"));
        assert!(err(r#"{"servers": [{"port": 1}], "bind_address": "not an ip"}"#).contains("`bind_address`"));
        assert!(err(r#"{"servers": [{"host": "bad host!", "port": 1}]}"#).contains("`servers[0].host`"));
        assert!(err(r#"{"servers": [{"port": 1}], "status_listen": "127.0.0.1"}"#).contains("`status_listen`"));
        assert!(err(r#"{"servers": [{"port": 1}], "admin_listen": "x y:1"}"#).contains("`admin_listen`"));
        assert!(err(r#"{"servers": [{"port": 1}], "log_format": "xml"}"#).contains("`log_format`"));
        assert!(err(r#"{"servers": [{"port": 1}], "log_level": "verbose"}"#).contains("`log_level`"));
        assert!(err(r#"{"servers": [{"port": 1}], "log_level": 3}"#).contains("`log_level`"));
        let ok = Config::from_json(
            r#"{"servers": [{"host": "redis-1.example", "port": 1}], "bind_address": "::1",
                "status_listen": "[::1]:9121", "admin_listen": "localhost:9122", "log_format": "json",
                "log_level": "debug"}"#,
        )
        .unwrap();
        assert_eq!(ok.status_listen.as_deref(), Some("[::1]:9121"));
        assert_eq!(ok.log_format, LogFormat::Json);
        assert_eq!(ok.log_level, Some(Level::Debug));
    }

    #[test]
    fn credentials_users_and_protected_mode() {
        let config = Config::from_json(
            r#"{"servers": [{"port": 1}, {"port": 2, "server_auth": {"username": "u2", "password_env": "PW2"}}],
                "server_auth": {"password": "pw"}, "bind_address": "0.0.0.0",
                "client_users": [{"name": "default", "password_file": "/run/secret"},
                                 {"name": "ro", "password_sha256":
                                  "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", "readonly": true}]}"#,
        )
        .unwrap();
        let first = ServerAddress { host: "127.0.0.1".into(), port: 1 };
        let second = ServerAddress { host: "127.0.0.1".into(), port: 2 };
        assert_eq!(config.server_credentials(&first).unwrap().password, PasswordSource::Plain(Secret::new("pw")));
        assert_eq!(config.server_credentials(&second).unwrap().username.as_deref(), Some("u2"));
        assert!(config.client_users[1].readonly && !config.client_users[1].admin);
        assert!(!format!("{config:?}").contains("\"pw\""), "Debug shows no secret");

        let mut resolved = config.clone();
        resolved
            .resolve_secrets(|location| match location {
                SecretLocation::Env("PW2") => Ok(Secret::new("from-env")),
                SecretLocation::File("/run/secret") => Ok(Secret::new("from-file")),
                other => Err(format!("unexpected {other:?}")),
            })
            .unwrap();
        assert_eq!(
            resolved.server_credentials(&second).unwrap().password,
            PasswordSource::Plain(Secret::new("from-env"))
        );
        assert_eq!(resolved.client_users[0].password, PasswordSource::Plain(Secret::new("from-file")));
        let failed = config.clone().resolve_secrets(|_| Err("cannot read /run/secret".to_string())).unwrap_err();
        assert!(failed.0.contains("cannot read /run/secret"), "{failed}");

        let err = |text: &str| Config::from_json(text).unwrap_err().0;
        let open = err(r#"{"servers": [{"port": 1}], "bind_address": "0.0.0.0"}"#);
        assert!(open.contains("protected mode") && open.contains("client_users"), "{open}");
        assert!(Config::from_json(r#"{"servers": [{"port": 1}], "bind_address": "0.0.0.0", "protected_mode": false}"#)
            .is_ok());
        assert!(Config::from_json(r#"{"servers": [{"port": 1}], "bind_address": "::1"}"#).is_ok());
        let two =
            err(r#"{"servers": [{"port": 1}], "server_auth": {"password": "secret-value", "password_env": "X"}}"#);
        assert!(two.contains("exactly one of") && !two.contains("secret-value"), "{two}");
        assert!(err(r#"{"servers": [{"port": 1}], "client_users": [{"name": "a b", "password": "x"}]}"#)
            .contains("client_users[0].name"));
        assert!(err(r#"{"servers": [{"port": 1}], "client_users": [{"name": "a", "password_sha256": "xyz"}]}"#)
            .contains("64 hexadecimal"));
        assert!(err(r#"{"servers": [{"port": 1, "server_auth": {"pass": "x"}}]}"#).contains("servers[0].server_auth"));
    }

    #[test]
    fn workers_share_the_totals_and_are_refused_where_not_supported_yet() {
        let config = Config::from_json(
            r#"{"servers": [{"port": 1}], "workers": 4, "pool_size": 6, "max_clients": 1000, "hold_max_bytes": 8}"#,
        )
        .unwrap();
        assert_eq!(config.workers, 4);
        let share = config.worker_share();
        assert_eq!((share.pool_size, share.max_clients, share.hold_max_bytes), (1, 250, 2));
        assert_eq!(share.large_pool_size, 1, "at least one connection for large values, as configured");
        let err = |text: &str| Config::from_json(text).unwrap_err().0;
        assert!(err(r#"{"servers": [{"port": 1}], "workers": 0}"#).contains("`workers`"));
        assert!(err(r#"{"servers": [{"port": 1}], "workers": 65}"#).contains("at most 64"));
        let sentinel = r#"{"sentinel": {"master_name": "m", "sentinels": [{"port": 2}]}, "workers": 2}"#;
        let sentinel = Config::from_json(sentinel).unwrap();
        assert!(
            sentinel.sentinel.is_some() && sentinel.worker_share().sentinel.is_none(),
            "workers follow the decider"
        );
        let cluster = r#"{"cluster": {"seeds": [{"port": 2}]}, "workers": 2}"#;
        let cluster = Config::from_json(cluster).unwrap();
        assert!(cluster.worker_share().cluster.is_some(), "a worker routes by the slots");
        let mut reloaded = config.clone();
        reloaded.workers = 2;
        assert_eq!(config.unchangeable_difference(&reloaded), Some("workers"));
    }
}
