//! The admin commands (`PROXY STATUS|SERVERS|ADD|REMOVE|FAILOVER|RELOAD`): recognised here, allowed only to
//! clients that came in on the admin listener ([`crate::Engine::accept_admin`]) or log in as an admin user,
//! refused here when not allowed, and carried out here through the [`Operations`] the engine offers (each one
//! touches every machine), which also makes their replies.

use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::resp::{self, Request};
use crate::status::StatusSnapshot;
use bytes::Bytes;
use std::fmt::Write;
use std::time::Instant;

/// One admin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AdminCommand {
    /// `PROXY STATUS`: the snapshot as `field:value` lines.
    Status,
    /// `PROXY SERVERS`: one line per server.
    Servers,
    /// `PROXY ADD host:port`: watch a new server (a fresh one is made a replica of the master).
    Add(ServerAddress),
    /// `PROXY REMOVE host:port`: drain a server, then forget it.
    Remove(ServerAddress),
    /// `PROXY FAILOVER [host:port]`: a planned switchover.
    Failover(Option<ServerAddress>),
    /// `PROXY RELOAD`: the runtime re-reads the configuration file.
    Reload,
}

/// What carrying out an admin command needs of the proxy (the engine offers it).
pub(crate) trait Operations {
    /// The status snapshot now.
    fn status(&self, now: Instant) -> StatusSnapshot;
    /// Watches a new server; the error is the reply's message.
    fn add_server(&mut self, now: Instant, address: ServerAddress) -> Result<(), String>;
    /// Drains a server, then forgets it; the error is the reply's message.
    fn remove_server(&mut self, now: Instant, address: &ServerAddress) -> Result<(), String>;
    /// Starts a planned switchover for `conn`, who is answered when it ends; the error is the reply's message.
    fn begin_switchover(&mut self, now: Instant, conn: ConnId, target: Option<ServerAddress>) -> Result<(), String>;
    /// Asks the runtime to re-read the configuration file.
    fn request_reload(&mut self);
}

/// Carries out `command` of admin client `conn`. Returns its reply, or None when it comes later (a switchover
/// answers when it ends).
pub(crate) fn execute(ops: &mut impl Operations, now: Instant, conn: ConnId, command: AdminCommand) -> Option<Bytes> {
    let reply = match command {
        AdminCommand::Status => bulk(&status_text(&ops.status(now))),
        AdminCommand::Servers => bulk_array(&server_lines(&ops.status(now))),
        AdminCommand::Add(address) => match ops.add_server(now, address) {
            Ok(()) => resp::simple_reply("OK"),
            Err(message) => resp::error_reply(&message),
        },
        AdminCommand::Remove(address) => match ops.remove_server(now, &address) {
            Ok(()) => resp::simple_reply("OK draining"),
            Err(message) => resp::error_reply(&message),
        },
        AdminCommand::Failover(target) => match ops.begin_switchover(now, conn, target) {
            Ok(()) => return None,
            Err(message) => resp::error_reply(&message),
        },
        AdminCommand::Reload => {
            ops.request_reload();
            resp::simple_reply("OK reloading: see the log for the outcome")
        }
    };
    Some(reply)
}

/// The clients that came in on the admin listener.
#[derive(Default)]
pub(crate) struct AdminClients {
    conns: Vec<ConnId>,
}

impl AdminClients {
    /// `conn` came in on the admin listener; clients that left (`alive` says) are forgotten.
    pub(crate) fn accepted(&mut self, conn: ConnId, alive: impl Fn(ConnId) -> bool) {
        self.conns.retain(|admin| alive(*admin));
        if alive(conn) {
            self.conns.push(conn);
        }
    }

    /// Whether `conn` came in on the admin listener.
    pub(crate) fn contains(&self, conn: ConnId) -> bool {
        self.conns.contains(&conn)
    }
}

/// Who decides the servers and the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decider {
    /// The proxy's own failover rules.
    Proxy,
    /// The sentinels (Sentinel mode).
    Sentinels,
    /// The cluster (cluster mode): the proxy may only ask a replica to take over.
    Cluster,
}

/// The admin command `request` asks for, or the error reply it gets: not `allowed` (neither the admin listener
/// nor an admin user), malformed, or one that `decider`, not the proxy, decides.
pub(crate) fn admit(request: &Request, allowed: bool, decider: Decider) -> Result<AdminCommand, Bytes> {
    if !allowed {
        return Err(resp::error_reply(
            "ERR PROXY commands are accepted only on the admin listener (admin_listen) or from a client user with \
             \"admin\": true",
        ));
    }
    let refusal = match (parse(request), decider) {
        (Err(message), _) => message,
        (Ok(AdminCommand::Add(_) | AdminCommand::Remove(_) | AdminCommand::Failover(_)), Decider::Sentinels) => {
            "ERR in Sentinel mode the sentinels decide the servers and the master: ask them".to_string()
        }
        (Ok(AdminCommand::Add(_) | AdminCommand::Remove(_)), Decider::Cluster) => {
            "ERR in cluster mode the cluster decides its nodes: add or remove them with CLUSTER MEET / CLUSTER \
             FORGET on the nodes"
                .to_string()
        }
        (Ok(AdminCommand::Failover(None)), Decider::Cluster) => {
            "ERR in cluster mode name the replica to promote: PROXY FAILOVER host:port".to_string()
        }
        (Ok(command), _) => return Ok(command),
    };
    Err(resp::error_reply(&refusal))
}

/// `request` as text, for the log.
pub(crate) fn describe(request: &Request) -> String {
    let words: Vec<String> = request.args().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    words.join(" ")
}

/// Whether `request` is a `PROXY ...` command.
pub(crate) fn is_proxy_command(request: &Request) -> bool {
    request.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"proxy"))
}

/// Parses a `PROXY ...` command; the error is the reply's message.
pub(crate) fn parse(request: &Request) -> Result<AdminCommand, String> {
    const USAGE: &str =
        "ERR usage: PROXY STATUS | SERVERS | ADD host:port | REMOVE host:port | FAILOVER [host:port] | RELOAD";
    let sub = request.arg(1).map(|s| s.to_ascii_uppercase()).ok_or(USAGE)?;
    let address = request.arg(2).map(parse_address).transpose()?;
    let command = match (sub.as_slice(), address, request.arg_count()) {
        (b"STATUS", None, 2) => AdminCommand::Status,
        (b"SERVERS", None, 2) => AdminCommand::Servers,
        (b"ADD", Some(address), 3) => AdminCommand::Add(address),
        (b"REMOVE", Some(address), 3) => AdminCommand::Remove(address),
        (b"FAILOVER", address, 2 | 3) => AdminCommand::Failover(address),
        (b"RELOAD", None, 2) => AdminCommand::Reload,
        _ => return Err(USAGE.to_string()),
    };
    Ok(command)
}

fn parse_address(arg: &[u8]) -> Result<ServerAddress, String> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(ServerAddress::parse)
        .ok_or_else(|| format!("ERR expected host:port, got {}", String::from_utf8_lossy(arg)))
}

/// A bulk string reply.
fn bulk(text: &str) -> Bytes {
    Bytes::from(format!("${}\r\n{text}\r\n", text.len()))
}

/// `PROXY STATUS`: `field:value` lines, like `INFO`.
fn status_text(status: &StatusSnapshot) -> String {
    let mut text = String::new();
    let master = status.master.as_ref().map_or("none".to_string(), ToString::to_string);
    let _ = writeln!(text, "master:{master}");
    let _ = writeln!(text, "healthy:{}", u8::from(status.healthy()));
    if let Some(reason) = &status.no_master_reason {
        let _ = writeln!(text, "no_master_reason:{reason}");
    }
    let _ = writeln!(text, "servers:{}", status.servers.len());
    let _ = writeln!(text, "clients:{}", status.clients);
    let _ = writeln!(text, "held_requests:{}", status.held_requests);
    let _ = writeln!(text, "failovers:{}", status.failovers_by_reason.iter().map(|(_, n)| n).sum::<u64>());
    if let Some(last) = status.failovers.last() {
        let to = last.to.as_ref().map_or("-".to_string(), ToString::to_string);
        let took = last.duration.map_or("under way".to_string(), |d| format!("{} ms", d.as_millis()));
        let _ = writeln!(text, "last_failover:to {to}, {}, {took}", last.reason);
    }
    text
}

/// `PROXY SERVERS`: one line per server.
fn server_lines(status: &StatusSnapshot) -> Vec<String> {
    status
        .servers
        .iter()
        .map(|s| {
            let role =
                if s.routed_master { "master".to_string() } else { s.role.map_or("unknown".into(), |r| r.to_string()) };
            let offset = s.repl_offset.map_or("-".to_string(), |o| o.to_string());
            format!("{} {role} {} offset={offset} ({})", s.address, s.health.name(), s.why)
        })
        .collect()
}

/// An array of bulk strings.
fn bulk_array(items: &[String]) -> Bytes {
    let mut out = format!("*{}\r\n", items.len());
    for item in items {
        let _ = write!(out, "${}\r\n{item}\r\n", item.len());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_admin_commands() {
        let parse_args = |args: &[&str]| parse(&Request::from_args(args));
        assert_eq!(parse_args(&["proxy", "status"]), Ok(AdminCommand::Status));
        assert_eq!(parse_args(&["PROXY", "FAILOVER"]), Ok(AdminCommand::Failover(None)));
        let address = ServerAddress { host: "127.0.0.1".into(), port: 7000 };
        assert_eq!(parse_args(&["PROXY", "add", "127.0.0.1:7000"]), Ok(AdminCommand::Add(address.clone())));
        assert_eq!(parse_args(&["PROXY", "FAILOVER", "127.0.0.1:7000"]), Ok(AdminCommand::Failover(Some(address))));
        assert!(parse_args(&["PROXY", "ADD", "nope"]).is_err());
        assert!(parse_args(&["PROXY", "ADD"]).is_err());
        assert!(parse_args(&["PROXY", "STATUS", "x:1"]).is_err());
        assert!(parse_args(&["PROXY"]).is_err());
    }

    /// Records the operations asked for; refuses to remove `refused`.
    #[derive(Default)]
    struct Recorder {
        asked: Vec<String>,
        refused: Option<ServerAddress>,
    }

    impl Operations for Recorder {
        fn status(&self, _now: Instant) -> StatusSnapshot {
            unreachable!("not asked for by these commands")
        }
        fn add_server(&mut self, _now: Instant, address: ServerAddress) -> Result<(), String> {
            self.asked.push(format!("add {address}"));
            Ok(())
        }
        fn remove_server(&mut self, _now: Instant, address: &ServerAddress) -> Result<(), String> {
            self.asked.push(format!("remove {address}"));
            match &self.refused {
                Some(refused) if refused == address => Err(format!("ERR {address} is the master")),
                _ => Ok(()),
            }
        }
        fn begin_switchover(
            &mut self,
            _now: Instant,
            conn: ConnId,
            target: Option<ServerAddress>,
        ) -> Result<(), String> {
            self.asked.push(format!("failover {conn} {target:?}"));
            Ok(())
        }
        fn request_reload(&mut self) {
            self.asked.push("reload".to_string());
        }
    }

    #[test]
    fn executes_each_command_through_the_operations_and_makes_its_reply() {
        let (now, conn) = (Instant::now(), crate::conn::client_and_backend_ids().0);
        let a = ServerAddress { host: "127.0.0.1".into(), port: 7000 };
        let b = ServerAddress { host: "127.0.0.1".into(), port: 7001 };
        let mut ops = Recorder { refused: Some(b.clone()), ..Recorder::default() };
        let reply = |ops: &mut Recorder, command| execute(ops, now, conn, command).map(|r| r.to_vec());
        assert_eq!(reply(&mut ops, AdminCommand::Add(a.clone())), Some(b"+OK\r\n".to_vec()));
        assert_eq!(reply(&mut ops, AdminCommand::Remove(a.clone())), Some(b"+OK draining\r\n".to_vec()));
        assert_eq!(
            reply(&mut ops, AdminCommand::Remove(b.clone())),
            Some(b"-ERR 127.0.0.1:7001 is the master\r\n".to_vec())
        );
        // A switchover answers when it ends, not now.
        assert_eq!(reply(&mut ops, AdminCommand::Failover(Some(a.clone()))), None);
        let reload = reply(&mut ops, AdminCommand::Reload).expect("a reply");
        assert!(reload.starts_with(b"+OK reloading"), "{}", String::from_utf8_lossy(&reload));
        assert_eq!(
            ops.asked,
            [
                format!("add {a}"),
                format!("remove {a}"),
                format!("remove {b}"),
                format!("failover {conn} Some({a:?})"),
                "reload".to_string()
            ]
        );
    }
}
