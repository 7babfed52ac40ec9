//! The admin commands (`PROXY STATUS|SERVERS|ADD|REMOVE|FAILOVER|RELOAD`): recognised here, allowed only to
//! clients that came in on the admin listener ([`crate::Engine::accept_admin`]) or log in as an admin user,
//! refused here when not allowed, carried out by the engine (they touch every machine).

use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::resp::{self, Request};
use crate::status::StatusSnapshot;
use bytes::Bytes;
use std::fmt::Write;

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

/// The admin command `request` asks for, or the error reply it gets: not `allowed` (neither the admin listener
/// nor an admin user), malformed, or, in Sentinel mode (`following_sentinels`), one that the sentinels decide.
pub(crate) fn admit(request: &Request, allowed: bool, following_sentinels: bool) -> Result<AdminCommand, Bytes> {
    if !allowed {
        return Err(resp::error_reply(
            "ERR PROXY commands are accepted only on the admin listener (admin_listen) or from a client user with \
             \"admin\": true",
        ));
    }
    match parse(request) {
        Err(message) => Err(resp::error_reply(&message)),
        Ok(AdminCommand::Add(_) | AdminCommand::Remove(_) | AdminCommand::Failover(_)) if following_sentinels => {
            Err(resp::error_reply("ERR in Sentinel mode the sentinels decide the servers and the master: ask them"))
        }
        Ok(command) => Ok(command),
    }
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
pub(crate) fn bulk(text: &str) -> Bytes {
    Bytes::from(format!("${}\r\n{text}\r\n", text.len()))
}

/// `PROXY STATUS`: `field:value` lines, like `INFO`.
pub(crate) fn status_text(status: &StatusSnapshot) -> String {
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
pub(crate) fn server_lines(status: &StatusSnapshot) -> Vec<String> {
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
pub(crate) fn bulk_array(items: &[String]) -> Bytes {
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
}
