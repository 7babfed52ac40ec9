//! Per-client connection state: what the client has made its connection carry (db, MULTI, WATCH, subscriptions,
//! protocol, name ...) and therefore whether it needs a private backend connection.
//!
//! State is tracked from the requests, never from shared connections: a client whose requests would leave state
//! on a connection gets a connection of its own for as long as that state lasts.

use crate::command::{CommandFlags, CommandSpec};
use crate::resp::{bulk_reply, Request};
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
    /// A private connection until the client leaves (AUTH, HELLO, CLIENT SETNAME ...).
    Sticky,
    /// A private connection until the client leaves, whose every frame is passed straight to the client because
    /// the server pushes frames no request asked for (SUBSCRIBE family, MONITOR, CLIENT TRACKING/REPLY).
    Passthrough,
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
    /// WATCH is active.
    pub(crate) watching: bool,
    /// A blocking command is in flight.
    pub(crate) blocking: bool,
    /// The strongest pin any request so far demanded that lasts for the client's life.
    pub(crate) lasting_pin: Option<Pin>,
}

/// `CONFIG SET` parameters that would change replication or lock the proxy out.
const TOPOLOGY_CONFIG: &[&[u8]] = &[
    b"replicaof",
    b"slaveof",
    b"masterauth",
    b"masteruser",
    b"replica-priority",
    b"slave-priority",
    b"replica-read-only",
    b"slave-read-only",
    b"replica-announced",
    b"slave-announced",
    b"min-replicas-to-write",
    b"min-slaves-to-write",
    b"min-replicas-max-lag",
    b"min-slaves-max-lag",
    b"requirepass",
    b"port",
    b"bind",
];

fn refuse_topology(what: &str) -> Handling {
    Handling::Refuse(format!(
        "ERR redis-proxy refuses {what}: the proxy manages replication (set allow_topology_commands to allow it)"
    ))
}

impl Session {
    /// Whether the client's private connection (if any) could be released now: no state would be lost.
    pub(crate) fn is_clean(&self) -> bool {
        !self.other_db && !self.in_multi && !self.watching && !self.blocking && self.lasting_pin.is_none()
    }

    fn is_passthrough(&self) -> bool {
        self.lasting_pin == Some(Pin::Passthrough)
    }

    /// The privacy the client's state demands right now.
    pub(crate) fn current_pin(&self) -> Pin {
        match self.lasting_pin {
            Some(pin) => pin,
            None if self.is_clean() => Pin::Shared,
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
        let arg1 = request.arg(1);
        let pin = match spec.name {
            "quit" => return Handling::LocalThenClose(Bytes::from_static(b"+OK\r\n")),
            "ping" if !pinned && request.arg_count() <= 2 => {
                return Handling::Local(match arg1 {
                    None => Bytes::from_static(b"+PONG\r\n"),
                    Some(message) => bulk_reply(message),
                });
            }
            "reset" if !pinned => return Handling::Local(Bytes::from_static(b"+RESET\r\n")),
            "reset" => {
                self.other_db = false;
                self.in_multi = false;
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
                self.in_multi = true;
                Pin::Transient
            }
            "exec" | "discard" if pinned => {
                self.in_multi = false;
                self.watching = false;
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
                self.lasting_pin = Some(Pin::Passthrough);
                Pin::Passthrough
            }
            "hello" | "auth" | "client|setname" | "client|setinfo" | "client|no-evict" | "client|no-touch"
            | "readonly" | "readwrite" => {
                self.lasting_pin = self.lasting_pin.max(Some(Pin::Sticky));
                Pin::Sticky
            }
            "replicaof" | "slaveof" | "failover" | "shutdown" if !allow_topology => {
                return refuse_topology(spec.name);
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
            "sync" | "psync" => {
                return Handling::Refuse("ERR redis-proxy does not let clients replicate through it".to_string());
            }
            name if !allow_topology && (name == "debug" || name.starts_with("cluster")) => {
                return refuse_topology(name.split('|').next().unwrap_or(name));
            }
            "config|set" if !allow_topology => {
                let touches_topology = request
                    .args()
                    .skip(2)
                    .step_by(2)
                    .any(|param| TOPOLOGY_CONFIG.iter().any(|t| param.eq_ignore_ascii_case(t)));
                if touches_topology {
                    return refuse_topology("CONFIG SET of replication settings");
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
    fn topology_commands_are_refused() {
        let mut s = Session::default();
        assert!(matches!(classify(&mut s, &["REPLICAOF", "NO", "ONE"], false), Handling::Refuse(_)));
        assert!(matches!(classify(&mut s, &["config", "set", "replica-priority", "0"], false), Handling::Refuse(_)));
        assert_eq!(classify(&mut s, &["config", "set", "maxmemory", "1"], false), Handling::Forward(Pin::Shared));
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
