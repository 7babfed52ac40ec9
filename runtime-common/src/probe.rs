//! `--probe CONFIG.json`: what `nginx -t` and `haproxy -c` are, but against the live servers. It connects to every
//! configured server (in Sentinel mode: every sentinel, then the master a majority names and the configured
//! servers) with the configured TLS and credentials, as the proxy would, and prints one line per server:
//! reachable or not, TLS, auth, role, replication link and offset, the Redis version. It exits 0 only when a
//! master is usable. `--check` stays offline.
//!
//! Blocking `std` sockets with timeouts, one thread per server, and the same TLS client configuration as the
//! proxy ([`TlsSetup`]): a probe's verdict on a certificate is the proxy's.

use crate::server_cert::TlsFailure;
use crate::tls::{TlsConn, TlsSetup};
use bytes::BytesMut;
use redis_proxy_engine::{Config, Credentials, PasswordSource, ServerAddress};
use std::fmt::Write as _;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long one server may take to connect, shake hands and answer, in all.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest reply a probe reads (an `INFO` is a few kB).
const MAX_REPLY: usize = 1 << 20;

/// The binaries' `--probe`: loads the TLS files, probes, prints the report on stdout, and returns the exit code
/// (0: a master is usable, 1: none is, 2: a TLS file does not load).
pub fn main(program: &str, config: &Config, path: &str) -> ExitCode {
    let tls = match TlsSetup::load(config) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("{program}: {path}: {error}");
            return ExitCode::from(2);
        }
    };
    let report = probe(config, &tls, PROBE_TIMEOUT);
    print!("{}", report.text);
    ExitCode::from(if report.master_usable { 0 } else { 1 })
}

/// What `--probe` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// One line per server (and sentinel), then the verdict.
    pub text: String,
    /// Whether a master is usable: reachable, its TLS and credentials accepted, and it reports `role:master`
    /// (in Sentinel mode: the one a majority of the sentinels names).
    pub master_usable: bool,
}

/// Probes the servers (or sentinels) of `config` with `tls`, each within `timeout`.
pub fn probe(config: &Config, tls: &TlsSetup, timeout: Duration) -> Report {
    let mut text = String::new();
    let Some(sentinel) = &config.sentinel else {
        let results = probe_all(&config.servers, |address| probe_server(address, config, tls, timeout));
        let masters: Vec<&ServerAddress> =
            results.iter().filter(|(_, r)| r.usable_master()).map(|(address, _)| *address).collect();
        for (address, result) in &results {
            let _ = writeln!(text, "{address}  {}", result.line());
        }
        let master_usable = !masters.is_empty();
        text.push_str(&verdict(&masters));
        return Report { text, master_usable };
    };
    let answers = probe_all(&sentinel.sentinels, |address| {
        probe_sentinel(address, &sentinel.master_name, sentinel.credentials.as_ref(), tls, timeout)
    });
    let mut named: Vec<(ServerAddress, usize)> = Vec::new();
    for (address, answer) in &answers {
        let _ = writeln!(text, "sentinel {address}  {}", answer.line);
        if let Some(master) = &answer.master {
            match named.iter_mut().find(|(m, _)| m == master) {
                Some((_, count)) => *count += 1,
                None => named.push((master.clone(), 1)),
            }
        }
    }
    let needed = sentinel.sentinels.len() / 2 + 1;
    let agreed = named.iter().find(|(_, count)| *count >= needed).map(|(master, _)| master.clone());
    let mut servers = config.servers.clone();
    if let Some(master) = &agreed {
        if !servers.contains(master) {
            servers.insert(0, master.clone());
        }
    }
    let results = probe_all(&servers, |address| probe_server(address, config, tls, timeout));
    for (address, result) in &results {
        let _ = writeln!(text, "{address}  {}", result.line());
    }
    let master_usable = match &agreed {
        None => {
            let _ = writeln!(
                text,
                "NO MASTER: no {needed} of {} sentinels name the same master for {:?}",
                sentinel.sentinels.len(),
                sentinel.master_name
            );
            false
        }
        Some(master) => {
            let usable = results.iter().any(|(address, r)| *address == master && r.usable_master());
            if usable {
                let _ = writeln!(text, "OK: a majority of the sentinels names {master}, and it is usable as master");
            } else {
                let _ = writeln!(
                    text,
                    "NO MASTER: a majority of the sentinels names {master}, but it is not usable as master (see its \
                     line)"
                );
            }
            usable
        }
    };
    Report { text, master_usable }
}

/// The last line: which master the proxy would use, or that none is usable.
fn verdict(masters: &[&ServerAddress]) -> String {
    match masters {
        [] => "NO MASTER: no server is usable as master (see the lines above)\n".to_string(),
        [master] => format!("OK: {master} is usable as master\n"),
        several => {
            let list: Vec<String> = several.iter().map(|m| m.to_string()).collect();
            format!(
                "OK: {} servers are usable as master ({}): the proxy adopts one and re-points the others\n",
                several.len(),
                list.join(", ")
            )
        }
    }
}

/// Runs `probe` for every address on a thread of its own; the results in the order of `addresses`.
fn probe_all<T: Send>(
    addresses: &[ServerAddress],
    probe: impl Fn(&ServerAddress) -> T + Sync,
) -> Vec<(&ServerAddress, T)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = addresses.iter().map(|address| (address, scope.spawn(|| probe(address)))).collect();
        handles.into_iter().filter_map(|(address, handle)| handle.join().ok().map(|result| (address, result))).collect()
    })
}

/// How far a probe of one server got, and what it learnt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServerResult {
    /// What stopped it, in plain words (None: it got `INFO`).
    failure: Option<String>,
    /// The TCP connection was made.
    reachable: bool,
    /// `Some(true)`: TLS was used and the handshake succeeded.
    tls: Option<bool>,
    /// `Some(true)`: credentials were sent and accepted.
    auth: Option<bool>,
    /// The `INFO` fields the line shows.
    info: Option<Info>,
}

/// The facts of one `INFO` reply that `--probe` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Info {
    role: String,
    version: String,
    master: Option<String>,
    link: Option<String>,
    syncing: bool,
    loading: bool,
    offset: Option<String>,
    replicas: Option<String>,
}

impl Info {
    fn parse(text: &str) -> Info {
        let mut info = Info::default();
        let (mut host, mut port) = (None, None);
        let (mut master_offset, mut replica_offset) = (None, None);
        for line in text.lines() {
            let Some((key, value)) = line.trim_end().split_once(':') else { continue };
            let value = value.to_string();
            match key {
                "role" => info.role = if value == "slave" { "replica".to_string() } else { value },
                "redis_version" => info.version = value,
                "master_host" => host = Some(value),
                "master_port" => port = Some(value),
                "master_link_status" => info.link = Some(value),
                "master_sync_in_progress" => info.syncing = value == "1",
                "loading" => info.loading = value == "1",
                "master_repl_offset" => master_offset = Some(value),
                "slave_repl_offset" => replica_offset = Some(value),
                "connected_slaves" => info.replicas = Some(value),
                _ => {}
            }
        }
        if let (Some(host), Some(port)) = (host, port) {
            info.master = Some(format!("{host}:{port}"));
        }
        info.offset = if info.role == "replica" { replica_offset.or(master_offset) } else { master_offset };
        info
    }
}

impl ServerResult {
    /// Reachable, TLS and credentials accepted, `role:master`, not loading.
    fn usable_master(&self) -> bool {
        self.failure.is_none() && self.info.as_ref().is_some_and(|i| i.role == "master" && !i.loading)
    }

    /// The line after the address.
    fn line(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.reachable {
            return self.failure.clone().unwrap_or_default();
        }
        parts.push("reachable".to_string());
        match self.tls {
            None => parts.push("plain TCP".to_string()),
            Some(true) => parts.push("TLS ok".to_string()),
            Some(false) => {}
        }
        match self.auth {
            None if self.failure.is_none() => parts.push("no auth".to_string()),
            Some(true) => parts.push("auth ok".to_string()),
            _ => {}
        }
        if let Some(failure) = &self.failure {
            parts.push(failure.clone());
        }
        if let Some(info) = &self.info {
            let mut role = info.role.clone();
            if let Some(master) = info.master.as_ref().filter(|_| info.role == "replica") {
                role = format!("replica of {master}");
            }
            if info.loading {
                role.push_str(" (loading its data set)");
            }
            parts.push(role);
            if info.role == "replica" {
                let link = match (info.syncing, info.link.as_deref()) {
                    (true, _) => "link syncing".to_string(),
                    (false, Some(link)) => format!("link {link}"),
                    (false, None) => "link unknown".to_string(),
                };
                parts.push(link);
            } else if let Some(replicas) = &info.replicas {
                parts.push(format!("{replicas} replica(s)"));
            }
            if let Some(offset) = &info.offset {
                parts.push(format!("offset {offset}"));
            }
            parts.push(format!("redis {}", if info.version.is_empty() { "?" } else { &info.version }));
        }
        parts.join("  ")
    }
}

/// What one sentinel answered.
struct SentinelAnswer {
    line: String,
    master: Option<ServerAddress>,
}

/// Connects to a sentinel, logs in, and asks it for the master's address.
fn probe_sentinel(
    address: &ServerAddress,
    master_name: &str,
    credentials: Option<&Credentials>,
    tls: &TlsSetup,
    timeout: Duration,
) -> SentinelAnswer {
    let mut result = ServerResult::default();
    let Some(mut conn) = open(address, tls, timeout, &mut result) else {
        return SentinelAnswer { line: result.line(), master: None };
    };
    if !log_in(&mut conn, credentials, &mut result) {
        return SentinelAnswer { line: result.line(), master: None };
    }
    let question: [&[u8]; 3] = [b"SENTINEL", b"get-master-addr-by-name", master_name.as_bytes()];
    let master = match conn.call(&question) {
        Ok(Reply::Array(items)) => match items.as_slice() {
            [Reply::Bulk(host), Reply::Bulk(port)] => String::from_utf8_lossy(port)
                .parse()
                .ok()
                .map(|port| ServerAddress { host: String::from_utf8_lossy(host).into_owned(), port }),
            _ => None,
        },
        Ok(Reply::Error(error)) => {
            result.failure = Some(format!("answers {error}"));
            None
        }
        Ok(_) => {
            result.failure = Some(format!("does not know the master name {master_name:?}"));
            None
        }
        Err(error) => {
            result.failure = Some(io_words(&error));
            None
        }
    };
    let mut line = result.line();
    if let Some(master) = &master {
        let _ = write!(line, "  names master {master}");
    }
    SentinelAnswer { line, master }
}

/// Connects to a server with the proxy's TLS and credentials and reads its `INFO`.
fn probe_server(address: &ServerAddress, config: &Config, tls: &TlsSetup, timeout: Duration) -> ServerResult {
    let mut result = ServerResult::default();
    let Some(mut conn) = open(address, tls, timeout, &mut result) else { return result };
    if !log_in(&mut conn, config.server_credentials(address), &mut result) {
        return result;
    }
    match conn.call(&[b"INFO"]) {
        Ok(Reply::Bulk(text)) => result.info = Some(Info::parse(&String::from_utf8_lossy(&text))),
        Ok(Reply::Error(error)) if error.starts_with("NOAUTH") => {
            result.failure = Some(format!(
                "auth refused: {error} (it wants a password and server_auth gives none: set server_auth)"
            ));
        }
        Ok(Reply::Error(error)) => result.failure = Some(format!("INFO answered {error}")),
        Ok(_) => result.failure = Some("INFO gave an unexpected reply".to_string()),
        Err(error) => result.failure = Some(io_words(&error)),
    }
    result
}

/// Sends `AUTH` if there are credentials; returns whether the server may be asked more (false: `result` says
/// why not).
fn log_in(conn: &mut Conn, credentials: Option<&Credentials>, result: &mut ServerResult) -> bool {
    let Some(credentials) = credentials else { return true };
    let PasswordSource::Plain(password) = &credentials.password else {
        result.failure = Some("auth: the password is not readable here (a hash is for client users only)".into());
        return false;
    };
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    if let Some(username) = &credentials.username {
        args.push(username.as_bytes());
    }
    args.push(password.expose());
    match conn.call(&args) {
        Ok(Reply::Simple(_)) => {
            result.auth = Some(true);
            true
        }
        // A server without a password answers a bare AUTH with this, and works: as the proxy sees it.
        Ok(Reply::Error(error)) if error.contains("without any password configured") => {
            result.auth = None;
            true
        }
        Ok(Reply::Error(error)) => {
            result.auth = Some(false);
            result.failure = Some(format!("auth refused: {error} (check server_auth against its requirepass or ACL)"));
            false
        }
        Ok(_) => {
            result.failure = Some("AUTH gave an unexpected reply".to_string());
            false
        }
        Err(error) => {
            result.failure = Some(io_words(&error));
            false
        }
    }
}

/// Connects (and shakes hands, under `server_tls`); None when that failed, with `result` saying why.
fn open(address: &ServerAddress, tls: &TlsSetup, timeout: Duration, result: &mut ServerResult) -> Option<Conn> {
    let deadline = Instant::now() + timeout;
    let resolved = (address.host.as_str(), address.port).to_socket_addrs().map(|mut all| all.next());
    let target = match resolved {
        Ok(Some(target)) => target,
        Ok(None) | Err(_) => {
            result.failure = Some(format!("cannot resolve the host name {:?}", address.host));
            return None;
        }
    };
    let stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(error) => {
            result.failure = Some(match error.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "refused: nothing listens there (is redis-server running on that port?)".to_string()
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
                    "timed out: no answer to the connect within {} s (host down, or a firewall drops the packets)",
                    timeout.as_secs()
                ),
                _ => format!("cannot connect: {error}"),
            });
            return None;
        }
    };
    result.reachable = true;
    let _ = stream.set_nodelay(true);
    let tls = match tls.connect(address) {
        None => None,
        Some(Err(error)) => {
            result.failure = Some(format!("TLS refused: {error}"));
            return None;
        }
        Some(Ok(tls)) => Some(tls),
    };
    let mut conn = Conn { stream, tls, buf: BytesMut::new(), deadline };
    if conn.tls.is_some() {
        result.tls = Some(false);
        if let Err(error) = conn.handshake() {
            result.failure = Some(match error.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>()) {
                Some(failure) => format!("TLS refused: {}", plain_part(&failure.text)),
                // No answer to the handshake: a server that does not answer, not a refusal.
                None if matches!(error.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => io_words(&error),
                None => format!("TLS failed: {}", io_words(&error)),
            });
            return None;
        }
        result.tls = Some(true);
    }
    Some(conn)
}

/// `TLS with server 127.0.0.1:6379 failed: its certificate ...` without the part the line already says.
fn plain_part(text: &str) -> &str {
    text.split_once(" failed: ").map_or(text, |(_, rest)| rest)
}

/// An I/O error of an open connection in plain words.
fn io_words(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out: it accepted the connection but did \
                                                                not answer in time (busy, paused or stopped?)"
            .to_string(),
        io::ErrorKind::UnexpectedEof => "it closed the connection".to_string(),
        _ => error.to_string(),
    }
}

/// A RESP2 reply, as far as a probe needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

/// One blocking connection, plain or TLS, with a deadline for all of it.
struct Conn {
    stream: TcpStream,
    tls: Option<TlsConn>,
    buf: BytesMut,
    deadline: Instant,
}

impl Conn {
    /// The time left, as a socket timeout (an error once none is left).
    fn time_left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    fn handshake(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else { return Ok(()) };
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            self.stream.set_write_timeout(Some(left))?;
            if tls.handshake(&mut &self.stream)? {
                return Ok(());
            }
        }
    }

    /// Sends a command and reads its reply.
    fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        self.send(&frame)?;
        loop {
            if let Some((reply, used)) = parse(&self.buf, 0)? {
                let _ = self.buf.split_to(used);
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too large"));
            }
            self.fill()?;
        }
    }

    fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let left = self.time_left()?;
        self.stream.set_write_timeout(Some(left))?;
        match self.tls.as_mut() {
            None => (&self.stream).write_all(bytes),
            Some(tls) => {
                while !bytes.is_empty() {
                    let taken = tls.write(&mut &self.stream, &[IoSlice::new(bytes)])?;
                    bytes = &bytes[taken..];
                }
                while !tls.flush(&mut &self.stream)? {
                    if Instant::now() >= self.deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads more of the reply into `buf`.
    fn fill(&mut self) -> io::Result<()> {
        loop {
            let left = self.time_left()?;
            self.stream.set_read_timeout(Some(left))?;
            let read = match self.tls.as_mut() {
                None => {
                    let mut chunk = [0u8; 16 * 1024];
                    (&self.stream).read(&mut chunk).inspect(|&n| self.buf.extend_from_slice(&chunk[..n]))
                }
                Some(tls) => tls.read(&mut &self.stream, &mut self.buf),
            };
            match read {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => return Ok(()),
                // TLS records without data (a TLS 1.3 session ticket): read on.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// A complete reply at the start of `buf[at..]` and where it ends, or None when more bytes are needed.
fn parse(buf: &[u8], at: usize) -> io::Result<Option<(Reply, usize)>> {
    parse_at(buf, at, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> io::Result<Option<(Reply, usize)>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a RESP reply: {what}"));
    if depth > 8 {
        return Err(bad("nested too deep"));
    }
    let Some(rest) = buf.get(at..) else { return Ok(None) };
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let (Some(&kind), line) = (rest.first(), String::from_utf8_lossy(&rest[1.min(end)..end]).into_owned()) else {
        return Ok(None);
    };
    let next = at + end + 2;
    let number = || line.parse::<i64>().map_err(|_| bad("a bad length"));
    Ok(match kind {
        b'+' => Some((Reply::Simple(line), next)),
        b'-' => Some((Reply::Error(line), next)),
        b':' => Some((Reply::Integer(number()?), next)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let len = usize::try_from(len).map_err(|_| bad("a bad length"))?;
            if len > MAX_REPLY {
                return Err(bad("a bulk string too large"));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            Some((Reply::Bulk(buf[next..next + len].to_vec()), next + len + 2))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Nil, next)));
            }
            let mut items = Vec::new();
            let mut position = next;
            for _ in 0..count.min(1024) {
                let Some((item, after)) = parse_at(buf, position, depth + 1)? else { return Ok(None) };
                items.push(item);
                position = after;
            }
            Some((Reply::Array(items), position))
        }
        _ => return Err(bad("an unknown type byte")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_replies_a_probe_reads() {
        assert_eq!(parse(b"+OK\r\n", 0).unwrap(), Some((Reply::Simple("OK".into()), 5)));
        assert_eq!(parse(b"-WRONGPASS x\r\n", 0).unwrap(), Some((Reply::Error("WRONGPASS x".into()), 14)));
        assert_eq!(parse(b"$3\r\nab", 0).unwrap(), None, "incomplete");
        assert_eq!(parse(b"$-1\r\n", 0).unwrap(), Some((Reply::Nil, 5)));
        let array = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n";
        let (reply, used) = parse(array, 0).unwrap().unwrap();
        assert_eq!(used, array.len());
        assert_eq!(reply, Reply::Array(vec![Reply::Bulk(b"127.0.0.1".to_vec()), Reply::Bulk(b"6379".to_vec())]));
        assert!(parse(b"?what\r\n", 0).is_err());
        assert!(parse(b"$99999999999\r\n", 0).is_err());
        let mut deep = b"*1\r\n".repeat(20);
        deep.extend_from_slice(b":1\r\n");
        assert!(parse(&deep, 0).is_err(), "no unbounded recursion");
    }

    #[test]
    fn a_line_says_role_link_offset_and_version() {
        let info = Info::parse(
            "# Server\r\nredis_version:7.0.15\r\n# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n\
             master_port:7001\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:420\r\n",
        );
        let result =
            ServerResult { reachable: true, tls: Some(true), auth: Some(true), info: Some(info), failure: None };
        assert_eq!(
            result.line(),
            "reachable  TLS ok  auth ok  replica of 127.0.0.1:7001  link up  offset 420  redis 7.0.15"
        );
        assert!(!result.usable_master());
        let refused = ServerResult { failure: Some("refused: nothing listens there".into()), ..Default::default() };
        assert_eq!(refused.line(), "refused: nothing listens there");
    }
}
