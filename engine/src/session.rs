//! Per-client connection state: what the client has made its connection carry (db, MULTI, WATCH, subscriptions,
//! protocol, name ...) and therefore whether it needs a private backend connection.
//!
//! State is tracked from the requests, never from shared connections: a client whose requests would leave state
//! on a connection gets a connection of its own for as long as that state lasts.

use crate::command::{CommandFlags, CommandSpec};
use crate::resp::{self, bulk_reply, Request};
use bytes::Bytes;
use std::time::Duration;

/// How private a backend connection a client needs, from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Pin {
    /// Any shared connection will do.
    Shared,
    /// A private connection while the state lasts (MULTI, WATCH, SELECT of another db, a blocking command);
    /// released (after `RESET`) once the state ends.
    Transient,
    /// A private connection until the client leaves (HELLO with SETNAME, CLIENT ID ...).
    Sticky,
    /// A private connection until the client leaves, whose every frame is passed straight to the client because
    /// the server pushes frames no request asked for (SUBSCRIBE family, MONITOR, CLIENT TRACKING/REPLY).
    Passthrough,
    /// A private connection to the master until the client leaves, whose bytes are passed to the client as they
    /// come, unscanned: after `SYNC`/`PSYNC` the server sends an RDB payload that is not a RESP frame, then the
    /// replication stream (`REPLCONF` pins so too: it sets up that connection).
    Replication,
}

impl Pin {
    /// Whether the client's private connection passes what the server sends straight through.
    pub(crate) fn passes_through(self) -> bool {
        self >= Pin::Passthrough
    }
}

/// What to do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Forward it on a connection with at least this privacy.
    Forward(Pin),
    /// Answer it here with this reply.
    Local(Bytes),
    /// Answer it here, then close the client (QUIT).
    LocalThenClose(Bytes),
    /// Refuse it with this error message (without the leading `-`).
    Refuse(String),
    /// `EXEC` of a transaction in which the proxy refused a command: discard it on the server and answer
    /// `EXECABORT`, as Redis does when it rejected a command while queuing.
    AbortExec,
    /// Send it to the master at once on a connection of its own, never queued behind another request (`SCRIPT
    /// KILL`, `FUNCTION KILL`, `SHUTDOWN`: they must reach a server that is busy running a script).
    OutOfBand,
    /// `WAIT`, answered by the proxy: how many replicas have applied this client's earlier writes.
    Wait {
        /// Replicas to wait for.
        replicas: u64,
        /// How long at most (None: for ever, as `WAIT n 0`).
        timeout: Option<Duration>,
    },
}

/// The connection state one client has built up.
#[derive(Clone, Debug, Default)]
pub(crate) struct Session {
    /// The client selected a db other than 0 (or one the proxy cannot know).
    pub(crate) other_db: bool,
    /// Inside MULTI.
    pub(crate) in_multi: bool,
    /// The proxy refused a command inside the current MULTI: EXEC must fail.
    pub(crate) multi_refused: bool,
    /// WATCH is active.
    pub(crate) watching: bool,
    /// A blocking command is in flight.
    pub(crate) blocking: bool,
    /// The strongest pin any request so far demanded that lasts for the client's life.
    pub(crate) lasting_pin: Option<Pin>,
    /// The client speaks RESP3 (`HELLO 3`): its requests go to the RESP3 shared connections.
    pub(crate) resp3: bool,
    /// The name `CLIENT SETNAME` gave it, kept here so that it pins nothing.
    name: Option<Bytes>,
    /// Cluster mode: what would tie the client to one node's connection is refused (see
    /// [`Session::classify_in_cluster`]); a transaction is kept by the proxy and sent whole at `EXEC`.
    pub(crate) cluster: bool,
}

/// `CONFIG SET` parameters that would take a server away from the proxy or move it in the topology, with how to
/// do it instead. Settings that only tune replication (`min-replicas-to-write`, `replica-priority`,
/// `masterauth` ...) pass: the proxy reads them back from `INFO` or does not depend on them.
const REFUSED_CONFIG: &[(&[u8], &str)] = &[
    (b"replicaof", "the proxy decides who replicates whom; change the topology through the proxy's config"),
    (b"slaveof", "the proxy decides who replicates whom; change the topology through the proxy's config"),
    (b"port", "the proxy would lose the server; change it on the server directly, then in the proxy's config"),
    (b"bind", "the proxy could lose the server; change it on the server directly, then restart the proxy"),
    (b"requirepass", "the proxy's own connections would be locked out; change the password on the servers directly"),
];

/// The refusal of `what`, saying how to do it instead.
fn refuse(what: &str, instead: &str) -> Handling {
    Handling::Refuse(format!("ERR redis-proxy refuses {what}: {instead} (or set allow_topology_commands)"))
}

/// `DEBUG` subcommands that stop, restart or crash the server (to the proxy the master would just die) or change
/// its replication id (which the failover rules compare). The rest (`SLEEP`, `OBJECT`, `RELOAD` ...) pass.
const REFUSED_DEBUG: &[&[u8]] =
    &[b"restart", b"crash-and-recover", b"segfault", b"panic", b"assert", b"oom", b"change-repl-id"];

impl Session {
    /// Whether the client's private connection (if any) could be released now: no state would be lost.
    // `|`, not `||`: four flag loads without a branch each (it runs twice per request).
    pub(crate) fn is_clean(&self) -> bool {
        !(self.other_db | self.in_multi | self.watching | self.blocking) && self.lasting_pin.is_none()
    }

    fn is_passthrough(&self) -> bool {
        self.lasting_pin.is_some_and(Pin::passes_through)
    }

    /// The privacy the client's state demands right now. In cluster mode a transaction is queued by the proxy
    /// and a `WATCH` keeps only its own private connection: the client's other requests are routed as usual.
    pub(crate) fn current_pin(&self) -> Pin {
        match self.lasting_pin {
            Some(pin) => pin,
            None if self.cluster || self.is_clean() => Pin::Shared,
            None => Pin::Transient,
        }
    }

    /// Classifies `request` (whose command is `spec`, if Redis knows it), updating the session's state.
    ///
    /// `pinned` says whether the client holds a private connection now; `allow_topology` whether commands that
    /// change replication may pass.
    pub(crate) fn classify(
        &mut self,
        request: &Request,
        spec: Option<&'static CommandSpec>,
        pinned: bool,
        allow_topology: bool,
    ) -> Handling {
        let Some(spec) = spec else {
            if request.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"waitaof")) {
                // Redis 7.2's WAITAOF (unknown to the 7.0 table) would count a proxy connection's fsyncs.
                return Handling::Refuse(
                    "ERR redis-proxy does not support WAITAOF: it would count the fsyncs of a proxy connection, \
                     not of this client's writes"
                        .to_string(),
                );
            }
            return Handling::Forward(self.current_pin());
        };
        if !spec.accepts_arg_count(request.arg_count()) {
            // Redis answers with its own wording and nothing changes on the connection.
            return Handling::Forward(self.current_pin());
        }
        if !may_be_special(spec.name) {
            return self.classify_plain(spec);
        }
        let handling = self.classify_known(request, spec, pinned, allow_topology);
        if matches!(handling, Handling::Refuse(_)) && self.in_multi {
            // Redis fails EXEC of a transaction in which it rejected a command while queuing; so does the proxy.
            self.multi_refused = true;
        }
        handling
    }

    /// What [`Session::classify_known`] does for a command it has no arm for: the hot path (GET, SET ...) skips
    /// the match over every special name.
    #[inline]
    fn classify_plain(&mut self, spec: &'static CommandSpec) -> Handling {
        if spec.flags.contains(CommandFlags::BLOCKING) {
            self.blocking = true;
        }
        Handling::Forward(self.current_pin())
    }

    // Out of line: the hot path takes `classify_plain`, and inlining this large match into it cost instructions.
    #[inline(never)]
    fn classify_known(
        &mut self,
        request: &Request,
        spec: &'static CommandSpec,
        pinned: bool,
        allow_topology: bool,
    ) -> Handling {
        if self.cluster {
            if let Some(handling) = self.classify_in_cluster(request, spec) {
                return handling;
            }
        }
        let arg1 = request.arg(1);
        let pin = match spec.name {
            "quit" => return Handling::LocalThenClose(Bytes::from_static(b"+OK\r\n")),
            "ping" if !pinned && request.arg_count() <= 2 => {
                return Handling::Local(match arg1 {
                    None => Bytes::from_static(b"+PONG\r\n"),
                    Some(message) => bulk_reply(message),
                });
            }
            "reset" if !pinned => {
                // RESET returns the connection to RESP2 and forgets its name, as Redis does.
                self.resp3 = false;
                self.name = None;
                return Handling::Local(Bytes::from_static(b"+RESET\r\n"));
            }
            "reset" => {
                self.resp3 = false;
                self.name = None;
                self.other_db = false;
                self.in_multi = false;
                self.multi_refused = false;
                self.watching = false;
                if self.lasting_pin < Some(Pin::Passthrough) {
                    self.lasting_pin = None;
                }
                Pin::Transient
            }
            "select" if !pinned && arg1 == Some(b"0") && request.arg_count() == 2 => {
                return Handling::Local(Bytes::from_static(b"+OK\r\n"));
            }
            "select" => {
                if self.in_multi {
                    // Whether it runs depends on EXEC: the db is unknown from here on.
                    self.lasting_pin = self.lasting_pin.max(Some(Pin::Sticky));
                } else {
                    self.other_db = arg1 != Some(b"0");
                }
                Pin::Transient
            }
            "multi" => {
                self.multi_refused &= self.in_multi;
                self.in_multi = true;
                Pin::Transient
            }
            // In cluster mode the proxy queues the transaction: it ends here though no connection is held.
            "exec" | "discard" if pinned || self.cluster => {
                let abort = spec.name == "exec" && self.multi_refused;
                self.in_multi = false;
                self.multi_refused = false;
                self.watching = false;
                if abort {
                    return Handling::AbortExec;
                }
                Pin::Transient
            }
            "watch" => {
                self.watching = true;
                Pin::Transient
            }
            "unwatch" if pinned => {
                self.watching = false;
                Pin::Transient
            }
            "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe" | "sunsubscribe" | "monitor"
            | "client|tracking" | "client|reply" | "client|caching" => {
                self.lasting_pin = self.lasting_pin.max(Some(Pin::Passthrough));
                Pin::Passthrough
            }
            // `HELLO [2|3]` alone changes nothing but the protocol: the client moves to the shared connections of
            // that protocol, where the same HELLO (a no-op there) gets the server's own answer (server, version,
            // proto, id, mode, role, modules) in that protocol. With SETNAME it needs a connection of its own. (Its
            // AUTH option is the proxy's: `auth` takes it off before the session sees the request.)
            "hello" => {
                match arg1 {
                    Some(b"2") => self.resp3 = false,
                    Some(b"3") => self.resp3 = true,
                    // Redis answers a bad version itself (NOPROTO) and changes nothing.
                    _ => {}
                }
                if pinned || request.arg_count() > 2 {
                    // The proxy answers CLIENT GETNAME: it keeps the name HELLO gave too.
                    let mut options = request.args().skip(2);
                    while let Some(option) = options.next() {
                        if option.eq_ignore_ascii_case(b"auth") {
                            options.nth(1);
                        } else if option.eq_ignore_ascii_case(b"setname") {
                            let name = options.next().unwrap_or_default();
                            self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
                        }
                    }
                    self.lasting_pin = self.lasting_pin.max(Some(Pin::Sticky));
                    Pin::Sticky
                } else {
                    Pin::Shared
                }
            }
            // Inside MULTI they are queued on the server like any command; in pass-through the server answers.
            "client|setname" if !self.in_multi && !self.is_passthrough() => {
                let name = request.arg(2).unwrap_or_default();
                if !is_valid_client_attribute(name) {
                    return Handling::Local(resp::error_reply(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
                return Handling::Local(Bytes::from_static(b"+OK\r\n"));
            }
            "client|getname" if !self.in_multi && !self.is_passthrough() => {
                return Handling::Local(match &self.name {
                    Some(name) => bulk_reply(name),
                    None if self.resp3 => Bytes::from_static(b"_\r\n"),
                    None => Bytes::from_static(b"$-1\r\n"),
                });
            }
            // `CLIENT SETINFO` (Redis 7.2) is answered as Redis 7.2 answers it, whatever the server's version.
            "client" | "client|setinfo"
                if arg1.is_some_and(|sub| sub.eq_ignore_ascii_case(b"setinfo"))
                    && request.arg_count() == 4
                    && !self.in_multi
                    && !self.is_passthrough() =>
            {
                return Handling::Local(setinfo_reply(request.arg(2).unwrap_or_default(), request.arg(3)));
            }
            // What refers to the server-side connection itself: the client must keep that connection.
            "client|setname" | "client|id" | "client|getredir" | "client|no-evict" | "client|no-touch" | "readonly"
            | "readwrite" => {
                self.lasting_pin = self.lasting_pin.max(Some(Pin::Sticky));
                Pin::Sticky
            }
            "replicaof" | "slaveof" if !allow_topology => {
                return refuse(
                    &spec.name.to_ascii_uppercase(),
                    "the proxy manages replication; list the servers in the proxy's config and it points the \
                     replicas at the master it chose",
                );
            }
            "failover" if !allow_topology => {
                return refuse(
                    "FAILOVER",
                    "the proxy chooses the master; to steer which replica it promotes, CONFIG SET replica-priority \
                     on the replicas (lowest wins, 0 never)",
                );
            }
            "shutdown" if !allow_topology => {
                return refuse("SHUTDOWN", "send it to the server directly (redis-cli -h HOST -p PORT SHUTDOWN)");
            }
            "debug"
                if !allow_topology
                    && arg1.is_some_and(|sub| REFUSED_DEBUG.iter().any(|d| sub.eq_ignore_ascii_case(d))) =>
            {
                return refuse(
                    "DEBUG commands that stop the server or change its replication id",
                    "the proxy would fail the master over; send them to the server directly",
                );
            }
            name if !allow_topology && name.starts_with("cluster") => {
                return refuse(
                    "CLUSTER commands",
                    "the proxy fronts one master with replicas, not a cluster; send them to a server directly",
                );
            }
            // Inside MULTI they are only queued; in pass-through the client's own connection answers.
            "script|kill" | "function|kill" | "shutdown" if !self.in_multi && !self.is_passthrough() => {
                return Handling::OutOfBand;
            }
            "wait" if !self.in_multi && !self.is_passthrough() => {
                let number = |arg: Option<&[u8]>| std::str::from_utf8(arg?).ok()?.parse::<u64>().ok();
                match (request.arg_count(), number(arg1), number(request.arg(2))) {
                    (3, Some(replicas), Some(timeout_ms)) => {
                        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
                        return Handling::Wait { replicas, timeout };
                    }
                    // Redis answers malformed arguments with its own error at once.
                    _ => Pin::Shared,
                }
            }
            "sync" | "psync" | "replconf" => {
                self.lasting_pin = Some(Pin::Replication);
                Pin::Replication
            }
            "config|set" if !allow_topology => {
                let refused = request
                    .args()
                    .skip(2)
                    .step_by(2)
                    .find_map(|param| REFUSED_CONFIG.iter().find(|(name, _)| param.eq_ignore_ascii_case(name)));
                if let Some((name, instead)) = refused {
                    let what = format!("CONFIG SET {}", String::from_utf8_lossy(name));
                    return refuse(&what, instead);
                }
                Pin::Shared
            }
            "xread" | "xreadgroup" => {
                if request.args().skip(1).any(|a| a.eq_ignore_ascii_case(b"block")) {
                    self.blocking = true;
                }
                Pin::Shared
            }
            "wait" => {
                self.blocking = true;
                Pin::Shared
            }
            _ if spec.flags.contains(CommandFlags::BLOCKING) => {
                self.blocking = true;
                Pin::Shared
            }
            _ => Pin::Shared,
        };
        Handling::Forward(pin.max(self.current_pin()))
    }
}

impl Session {
    /// A new client's session; `cluster` in cluster mode.
    pub(crate) fn new(cluster: bool) -> Session {
        Session { cluster, ..Session::default() }
    }

    /// Cluster mode's answers to what would tie a client to one node's connection, or None to classify `request`
    /// as usual. `SELECT` is refused as Redis Cluster refuses it; `CLUSTER` subcommands pass (the engine answers
    /// or routes them); `READONLY`/`READWRITE` are answered here (a cluster-aware client sends them, and reads
    /// go to primaries); the `SUBSCRIBE` family passes (the engine follows shard channels on their slot's
    /// primary); the rest is refused for now, with the reason.
    fn classify_in_cluster(&mut self, request: &Request, spec: &'static CommandSpec) -> Option<Handling> {
        let not_yet = |what: &str| {
            Some(Handling::Refuse(format!(
                "ERR redis-proxy does not support {what} in cluster mode yet (see docs/cluster.md)"
            )))
        };
        match spec.name {
            "select" if request.arg(1) == Some(b"0") => Some(Handling::Local(Bytes::from_static(b"+OK\r\n"))),
            "select" => Some(Handling::Refuse("ERR SELECT is not allowed in cluster mode".to_string())),
            "readonly" | "readwrite" => Some(Handling::Local(Bytes::from_static(b"+OK\r\n"))),
            name if name.starts_with("cluster") => Some(Handling::Forward(self.current_pin())),
            // The proxy queues a transaction and sends it at EXEC on a shared connection, which a subscription
            // would take over.
            "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe" | "sunsubscribe"
                if self.in_multi =>
            {
                not_yet("the SUBSCRIBE family inside MULTI")
            }
            "monitor" | "client|tracking" | "client|reply" | "client|caching" | "client|id" | "client|getredir"
            | "client|no-evict" | "client|no-touch" | "sync" | "psync" | "replconf" => {
                not_yet(&spec.name.to_ascii_uppercase().replace('|', " "))
            }
            "hello" if request.arg_count() > 2 => not_yet("HELLO with options other than the protocol version"),
            "client|setname" if self.in_multi => not_yet("CLIENT SETNAME inside MULTI"),
            _ if spec.flags.contains(CommandFlags::BLOCKING) => not_yet("blocking commands"),
            "xread" | "xreadgroup" if request.args().skip(1).any(|a| a.eq_ignore_ascii_case(b"block")) => {
                not_yet("blocking commands")
            }
            _ => None,
        }
    }
}

/// The names [`Session::classify_known`] has an arm for, by first letter: bit `n` is set when one of them is `n`
/// bytes long (31: longer). `cluster...` and `client...` take every length from 6 up.
const SPECIAL_NAMES: [u32; 26] = {
    const NAMES: &[&str] = &[
        "quit",
        "ping",
        "reset",
        "select",
        "multi",
        "exec",
        "discard",
        "watch",
        "unwatch",
        "subscribe",
        "psubscribe",
        "ssubscribe",
        "unsubscribe",
        "punsubscribe",
        "sunsubscribe",
        "monitor",
        "hello",
        "readonly",
        "readwrite",
        "replicaof",
        "slaveof",
        "failover",
        "shutdown",
        "debug",
        "script|kill",
        "function|kill",
        "wait",
        "sync",
        "psync",
        "replconf",
        "xread",
        "xreadgroup",
    ];
    let mut table = [0u32; 26];
    let mut i = 0;
    while i < NAMES.len() {
        let name = NAMES[i].as_bytes();
        let len = if name.len() > 31 { 31 } else { name.len() };
        table[(name[0] - b'a') as usize] |= 1 << len;
        i += 1;
    }
    table[(b'c' - b'a') as usize] |= !0 << 6;
    table
};

/// Whether `name` (a command table name: lowercase ASCII) may have an arm of its own in
/// [`Session::classify_known`]; false is certain, true may be wrong.
#[inline]
pub(crate) fn may_be_special(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(letter) = bytes.first().and_then(|b| b.checked_sub(b'a')).filter(|l| *l < 26) else { return true };
    SPECIAL_NAMES[usize::from(letter)] & (1 << bytes.len().min(31)) != 0
}

/// Whether `value` is a valid client name or library attribute: printable ASCII without spaces, as Redis checks.
fn is_valid_client_attribute(value: &[u8]) -> bool {
    value.iter().all(|byte| (b'!'..=b'~').contains(byte))
}

/// Redis 7.2's answer to `CLIENT SETINFO <attribute> <value>`.
fn setinfo_reply(attribute: &[u8], value: Option<&[u8]>) -> Bytes {
    let attribute = String::from_utf8_lossy(attribute);
    let lowered = attribute.to_ascii_lowercase();
    if lowered != "lib-name" && lowered != "lib-ver" {
        return resp::error_reply(&format!("ERR Unrecognized option '{attribute}'"));
    }
    if !is_valid_client_attribute(value.unwrap_or_default()) {
        return resp::error_reply(&format!("ERR {lowered} cannot contain spaces, newlines or special characters."));
    }
    Bytes::from_static(b"+OK\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;

    fn classify(session: &mut Session, args: &[&str], pinned: bool) -> Handling {
        let request = Request::from_args(args);
        let spec = command::resolve(request.arg(0).unwrap(), request.arg(1));
        session.classify(&request, spec, pinned, false)
    }

    #[test]
    fn multi_pins_until_exec() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["GET", "k"], false), Handling::Forward(Pin::Shared));
        assert_eq!(classify(&mut s, &["multi"], false), Handling::Forward(Pin::Transient));
        assert_eq!(classify(&mut s, &["set", "k", "v"], true), Handling::Forward(Pin::Transient));
        assert_eq!(classify(&mut s, &["EXEC"], true), Handling::Forward(Pin::Transient));
        assert!(s.is_clean());
    }

    #[test]
    fn subscribe_is_passthrough_for_life() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["SUBSCRIBE", "ch"], false), Handling::Forward(Pin::Passthrough));
        assert_eq!(classify(&mut s, &["RESET"], true), Handling::Forward(Pin::Passthrough));
        assert_eq!(s.current_pin(), Pin::Passthrough);
    }

    #[test]
    fn select_zero_is_local_and_other_dbs_pin() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["select", "0"], false), Handling::Local(Bytes::from_static(b"+OK\r\n")));
        assert_eq!(classify(&mut s, &["select", "5"], false), Handling::Forward(Pin::Transient));
        assert!(!s.is_clean());
        assert_eq!(classify(&mut s, &["select", "0"], true), Handling::Forward(Pin::Transient));
        assert!(s.is_clean());
    }

    #[test]
    fn only_what_breaks_the_topology_is_refused() {
        let mut s = Session::default();
        assert!(matches!(classify(&mut s, &["REPLICAOF", "NO", "ONE"], false), Handling::Refuse(_)));
        assert!(matches!(
            classify(&mut s, &["config", "set", "maxmemory", "1", "port", "1"], false),
            Handling::Refuse(_)
        ));
        assert!(matches!(classify(&mut s, &["DEBUG", "restart"], false), Handling::Refuse(_)));
        assert!(matches!(classify(&mut s, &["cluster", "info"], false), Handling::Refuse(_)));
        for allowed in ["replica-priority", "min-replicas-to-write", "min-replicas-max-lag", "masterauth", "maxmemory"]
        {
            assert_eq!(classify(&mut s, &["config", "set", allowed, "1"], false), Handling::Forward(Pin::Shared));
        }
        assert_eq!(classify(&mut s, &["DEBUG", "SLEEP", "0"], false), Handling::Forward(Pin::Shared));
        // A wrong arity is Redis's to answer, in its own words.
        assert_eq!(classify(&mut s, &["REPLICAOF"], false), Handling::Forward(Pin::Shared));
        assert_eq!(classify(&mut s, &["MULTI", "x"], false), Handling::Forward(Pin::Shared));
        assert!(s.is_clean());
    }

    #[test]
    fn hello_moves_the_client_between_shared_pools_and_names_pin_nothing() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["HELLO", "3"], false), Handling::Forward(Pin::Shared));
        assert!(s.resp3);
        assert_eq!(classify(&mut s, &["CLIENT", "GETNAME"], false), Handling::Local(Bytes::from_static(b"_\r\n")));
        assert_eq!(
            classify(&mut s, &["CLIENT", "SETNAME", "app"], false),
            Handling::Local(Bytes::from_static(b"+OK\r\n"))
        );
        assert_eq!(classify(&mut s, &["client", "getname"], false), Handling::Local(bulk_reply(b"app")));
        assert!(
            matches!(classify(&mut s, &["CLIENT", "SETNAME", "a b"], false), Handling::Local(e) if e.starts_with(b"-ERR"))
        );
        assert_eq!(
            classify(&mut s, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], false),
            Handling::Local(Bytes::from_static(b"+OK\r\n"))
        );
        assert!(
            matches!(classify(&mut s, &["CLIENT", "SETINFO", "x", "y"], false), Handling::Local(e) if e.starts_with(b"-ERR"))
        );
        assert_eq!(classify(&mut s, &["HELLO", "2"], false), Handling::Forward(Pin::Shared));
        assert!(!s.resp3);
        assert!(s.is_clean());
        assert_eq!(
            classify(&mut s, &["HELLO", "3", "AUTH", "u", "setname", "p", "SETNAME", "x"], false),
            Handling::Forward(Pin::Sticky)
        );
        assert_eq!(classify(&mut s, &["CLIENT", "GETNAME"], true), Handling::Local(bulk_reply(b"x")));
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["CLIENT", "ID"], false), Handling::Forward(Pin::Sticky));
    }

    /// Every command of the table, also with a plausible argument for its subcommand-less form, classified in
    /// several states: the shortcut for plain commands decides as the full match does.
    #[test]
    fn the_plain_command_shortcut_agrees_with_the_full_match() {
        let setups: [&[&[&str]]; 4] = [&[], &[&["MULTI"]], &[&["SELECT", "3"]], &[&["SUBSCRIBE", "c"]]];
        let mut checked = 0;
        for top in command::all() {
            for spec in std::iter::once(top).chain(top.subcommands) {
                if may_be_special(spec.name) {
                    continue;
                }
                let mut args: Vec<String> = spec.name.split('|').map(str::to_string).collect();
                while !spec.accepts_arg_count(args.len()) {
                    args.push("0".to_string());
                }
                for setup in setups {
                    for allow_topology in [false, true] {
                        let mut full = Session::default();
                        for step in setup {
                            classify(&mut full, step, false);
                        }
                        let mut plain = full.clone();
                        let request = Request::from_args(&args);
                        let pinned = !full.is_clean();
                        let expected = full.classify_known(&request, spec, pinned, allow_topology);
                        assert_eq!(plain.classify(&request, Some(spec), pinned, allow_topology), expected, "{args:?}");
                        assert_eq!(format!("{plain:?}"), format!("{full:?}"), "{args:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn a_refusal_inside_multi_aborts_exec() {
        let mut s = Session::default();
        classify(&mut s, &["MULTI"], false);
        assert!(matches!(classify(&mut s, &["SHUTDOWN"], true), Handling::Refuse(_)));
        assert_eq!(classify(&mut s, &["EXEC"], true), Handling::AbortExec);
        assert!(s.is_clean());
        classify(&mut s, &["MULTI"], false);
        assert_eq!(classify(&mut s, &["EXEC"], true), Handling::Forward(Pin::Transient));
    }

    #[test]
    fn in_cluster_mode_a_subscription_inside_multi_is_refused_and_aborts_exec() {
        let mut s = Session::new(true);
        assert_eq!(classify(&mut s, &["MULTI"], false), Handling::Forward(Pin::Transient));
        for command in ["SUBSCRIBE", "SSUBSCRIBE", "sunsubscribe"] {
            assert!(matches!(classify(&mut s, &[command, "ch"], false), Handling::Refuse(e) if e.contains("MULTI")));
        }
        // In cluster mode a transaction holds no connection: `pinned` is false.
        assert_eq!(classify(&mut s, &["EXEC"], false), Handling::AbortExec);
        // Nothing was subscribed: the client's requests are routed as before.
        assert_eq!(s.current_pin(), Pin::Shared);
        assert_eq!(classify(&mut s, &["SSUBSCRIBE", "ch"], false), Handling::Forward(Pin::Passthrough));
    }

    #[test]
    fn replication_passes_through_to_the_master() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["REPLCONF", "rdb-only", "1"], false), Handling::Forward(Pin::Replication));
        assert_eq!(classify(&mut s, &["SYNC"], true), Handling::Forward(Pin::Replication));
        assert_eq!(classify(&mut s, &["SUBSCRIBE", "x"], true), Handling::Forward(Pin::Replication));
    }

    #[test]
    fn kills_go_out_of_band_and_wait_is_answered_here() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["SCRIPT", "KILL"], false), Handling::OutOfBand);
        assert_eq!(classify(&mut s, &["function", "kill"], false), Handling::OutOfBand);
        assert_eq!(
            classify(&mut s, &["WAIT", "1", "100"], false),
            Handling::Wait { replicas: 1, timeout: Some(Duration::from_millis(100)) }
        );
        assert_eq!(classify(&mut s, &["WAIT", "2", "0"], false), Handling::Wait { replicas: 2, timeout: None });
        assert_eq!(classify(&mut s, &["WAIT", "x", "0"], false), Handling::Forward(Pin::Shared));
        assert!(matches!(classify(&mut s, &["WAITAOF", "1", "0", "0"], false), Handling::Refuse(_)));
        assert_eq!(classify(&mut s, &["MULTI"], false), Handling::Forward(Pin::Transient));
        assert_eq!(classify(&mut s, &["WAIT", "1", "100"], true), Handling::Forward(Pin::Transient));
    }

    #[test]
    fn blocking_commands_pin_for_the_call() {
        let mut s = Session::default();
        assert_eq!(classify(&mut s, &["BLPOP", "q", "0"], false), Handling::Forward(Pin::Transient));
        let mut s = Session::default();
        assert_eq!(
            classify(&mut s, &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"], false),
            Handling::Forward(Pin::Transient)
        );
        let mut s = Session::default();
        assert_eq!(
            classify(&mut s, &["XREAD", "COUNT", "1", "STREAMS", "s", "0"], false),
            Handling::Forward(Pin::Shared)
        );
    }
}
