//! A fake Redis server for the probe: [`Info`] lays out what `INFO` reports, [`FakeServer`] answers `PING`,
//! `INFO`, `REPLICAOF`, `RESET`, `AUTH` and `CONFIG SET` from it (and, as a node of a cluster, `CLUSTER INFO` and
//! `CLUSTER NODES`).

use crate::address::ServerAddress;
use crate::resp::bulk_reply;
use bytes::{Bytes, BytesMut};

/// A replica's view of its master, as `INFO replication` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaLink {
    /// `master_host`.
    pub master_host: String,
    /// `master_port`.
    pub master_port: u16,
    /// `master_link_status:up`.
    pub link_up: bool,
    /// `master_last_io_seconds_ago` (Redis reports -1 while the link is down).
    pub last_io_secs: i64,
    /// `master_link_down_since_seconds`, reported only while the link is down (-1: never connected).
    pub link_down_since_secs: i64,
    /// `slave_priority`.
    pub priority: i64,
}

/// A replica a master lists in `INFO replication` (`slaveN:ip=...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedReplica {
    /// Its address.
    pub address: ServerAddress,
    /// Its replication offset.
    pub offset: i64,
}

/// What a server reports in `INFO` (server, persistence and replication sections), with Redis 7's field names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// `run_id`.
    pub run_id: String,
    /// `master_replid`: the history it serves, or follows once synced (None: its run id).
    pub replid: Option<String>,
    /// `master_replid2`: the history it continued when it was promoted (None: all zeros).
    pub replid2: Option<String>,
    /// `tcp_port`.
    pub port: u16,
    /// `loading:1`.
    pub loading: bool,
    /// `master_repl_offset`, and `slave_repl_offset` on a replica.
    pub offset: i64,
    /// None for `role:master`; a replica's link to its master otherwise.
    pub replica_of: Option<ReplicaLink>,
    /// The replicas a master lists.
    pub replicas: Vec<ConnectedReplica>,
}

impl Info {
    /// A master on `port` with no replicas, offset 0, a run id made from the port.
    pub fn master(port: u16) -> Info {
        Info {
            run_id: format!("{port:040}"),
            replid: None,
            replid2: None,
            port,
            loading: false,
            offset: 0,
            replica_of: None,
            replicas: Vec::new(),
        }
    }

    /// The text of the `INFO` reply.
    pub fn text(&self) -> String {
        let mut text = format!(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrun_id:{}\r\ntcp_port:{}\r\n\r\n\
             # Persistence\r\nloading:{}\r\n\r\n# Replication\r\n",
            self.run_id,
            self.port,
            u8::from(self.loading)
        );
        let offset = self.offset;
        match &self.replica_of {
            None => text.push_str("role:master\r\n"),
            Some(link) => {
                text.push_str(&format!(
                    "role:slave\r\nmaster_host:{}\r\nmaster_port:{}\r\nmaster_link_status:{}\r\n\
                     master_last_io_seconds_ago:{}\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:{offset}\r\n\
                     slave_repl_offset:{offset}\r\n",
                    link.master_host,
                    link.master_port,
                    if link.link_up { "up" } else { "down" },
                    link.last_io_secs,
                ));
                if !link.link_up {
                    text.push_str(&format!("master_link_down_since_seconds:{}\r\n", link.link_down_since_secs));
                }
                text.push_str(&format!(
                    "slave_priority:{}\r\nslave_read_only:1\r\nreplica_announced:1\r\n",
                    link.priority
                ));
            }
        }
        text.push_str(&format!("connected_slaves:{}\r\n", self.replicas.len()));
        for (n, replica) in self.replicas.iter().enumerate() {
            text.push_str(&format!(
                "slave{n}:ip={},port={},state=online,offset={},lag=0\r\n",
                replica.address.host, replica.address.port, replica.offset
            ));
        }
        let replid = self.replid.as_deref().unwrap_or(&self.run_id);
        let replid2 = self.replid2.as_deref().unwrap_or("0000000000000000000000000000000000000000");
        text.push_str(&format!(
            "master_failover_state:no-failover\r\nmaster_replid:{replid}\r\nmaster_replid2:{replid2}\r\n\
             master_repl_offset:{offset}\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\n"
        ));
        text
    }

    /// The `INFO` reply: its text as a bulk string.
    pub fn reply(&self) -> Bytes {
        bulk_reply(self.text().as_bytes())
    }
}

/// A Redis server reduced to what the probe and the failover rules talk to it about: `PING`, `INFO`, `REPLICAOF`
/// (which changes what its `INFO` says) and `RESET`.
#[derive(Debug)]
pub struct FakeServer {
    /// What its `INFO` reports; change it to make the server say something else.
    pub info: Info,
    /// What arrived and is not a complete request yet.
    received: Vec<u8>,
    /// The password it requires (`requirepass`), if any.
    password: Option<Vec<u8>>,
    /// The probe connection logged in with that password.
    authenticated: bool,
    /// The `CONFIG SET masterauth` value it was given last.
    pub masterauth: Option<Vec<u8>>,
    /// As a node of a healthy cluster: the `CLUSTER NODES` text it answers (None: not in a cluster).
    pub cluster_nodes: Option<String>,
}

impl FakeServer {
    /// A master on `port` (host 127.0.0.1) with a run id made from the port.
    pub fn master(port: u16) -> FakeServer {
        FakeServer {
            info: Info::master(port),
            received: Vec::new(),
            password: None,
            authenticated: false,
            masterauth: None,
            cluster_nodes: None,
        }
    }

    /// A primary on `port` in a healthy cluster whose `CLUSTER NODES` says `nodes`.
    pub fn cluster_node(port: u16, nodes: &str) -> FakeServer {
        FakeServer { cluster_nodes: Some(nodes.to_string()), ..FakeServer::master(port) }
    }

    /// A replica on `port` of the master at `master`, its link up, priority 100.
    pub fn replica_of(port: u16, master: &ServerAddress) -> FakeServer {
        let mut server = FakeServer::master(port);
        server.info.replica_of = Some(ReplicaLink {
            master_host: master.host.clone(),
            master_port: master.port,
            link_up: true,
            last_io_secs: 0,
            link_down_since_secs: -1,
            priority: 100,
        });
        server
    }

    /// Sets the replication offset it reports.
    pub fn with_offset(mut self, offset: i64) -> FakeServer {
        self.info.offset = offset;
        self
    }

    /// Requires `password` (as `requirepass`): before a right `AUTH`, every command gets `-NOAUTH`.
    pub fn with_password(mut self, password: &str) -> FakeServer {
        self.password = Some(password.as_bytes().to_vec());
        self
    }

    /// Sets the run id it reports.
    pub fn with_run_id(mut self, run_id: &str) -> FakeServer {
        self.info.run_id = run_id.to_string();
        self
    }

    /// Answers one command, given as its arguments, or None for a command it does not know.
    pub fn answer<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Option<Bytes> {
        let name = args.first()?.as_ref().to_ascii_uppercase();
        let arg = |i: usize| args.get(i).map(AsRef::as_ref);
        Some(match name.as_slice() {
            b"AUTH" => match (&self.password, args.last().map(AsRef::as_ref)) {
                (Some(password), Some(given)) if args.len() <= 3 && password.as_slice() == given => {
                    self.authenticated = true;
                    Bytes::from_static(b"+OK\r\n")
                }
                (None, _) => Bytes::from_static(
                    b"-ERR AUTH <password> called without any password configured for the default user. Are you \
                      sure your configuration is correct?\r\n",
                ),
                _ => Bytes::from_static(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
            },
            _ if self.password.is_some() && !self.authenticated => {
                Bytes::from_static(b"-NOAUTH Authentication required.\r\n")
            }
            b"CONFIG" => {
                self.masterauth = arg(3).map(<[u8]>::to_vec);
                Bytes::from_static(b"+OK\r\n")
            }
            b"PING" if self.info.loading => Bytes::from_static(b"-LOADING Redis is loading the dataset in memory\r\n"),
            b"PING" => Bytes::from_static(b"+PONG\r\n"),
            b"INFO" => self.info.reply(),
            b"RESET" => Bytes::from_static(b"+RESET\r\n"),
            b"CLUSTER" => match (&self.cluster_nodes, arg(1).map(<[u8]>::to_ascii_uppercase).as_deref()) {
                (None, _) => Bytes::from_static(b"-ERR This instance has cluster support disabled\r\n"),
                (Some(_), Some(b"INFO")) => bulk_reply(b"cluster_state:ok\r\ncluster_enabled:1\r\n"),
                (Some(nodes), Some(b"NODES")) => bulk_reply(nodes.as_bytes()),
                (Some(_), _) => Bytes::from_static(b"-ERR unknown CLUSTER subcommand\r\n"),
            },
            b"REPLICAOF" | b"SLAVEOF" => match (arg(1), arg(2)) {
                (Some(host), Some(port)) if host.eq_ignore_ascii_case(b"NO") && port.eq_ignore_ascii_case(b"ONE") => {
                    self.info.replica_of = None;
                    Bytes::from_static(b"+OK\r\n")
                }
                (Some(host), Some(port)) => {
                    let Some(port) = std::str::from_utf8(port).ok().and_then(|p| p.parse::<u16>().ok()) else {
                        return Some(Bytes::from_static(b"-ERR Invalid master port\r\n"));
                    };
                    // Redis connects to its new master in the background: the link is down until it has synced.
                    let priority = self.info.replica_of.as_ref().map_or(100, |link| link.priority);
                    self.info.replica_of = Some(ReplicaLink {
                        master_host: String::from_utf8_lossy(host).into_owned(),
                        master_port: port,
                        link_up: false,
                        last_io_secs: -1,
                        link_down_since_secs: -1,
                        priority,
                    });
                    Bytes::from_static(b"+OK\r\n")
                }
                _ => Bytes::from_static(b"-ERR wrong number of arguments for 'replicaof' command\r\n"),
            },
            _ => return None,
        })
    }

    /// Takes the bytes the engine sent it (in any pieces) and returns its replies to every complete request.
    ///
    /// Panics on a command it does not know or on bytes that are not requests: a test that sends it those is
    /// wrong about what reaches the server.
    pub fn respond(&mut self, sent: &[u8]) -> Bytes {
        self.received.extend_from_slice(sent);
        let mut out = BytesMut::new();
        while let Some((args, len)) = split_multibulk(&self.received) {
            let reply = self.answer(&args).unwrap_or_else(|| {
                panic!("the fake server does not know {:?}", String::from_utf8_lossy(&self.received[..len]))
            });
            out.extend_from_slice(&reply);
            self.received.drain(..len);
        }
        out.freeze()
    }
}

/// The arguments of the complete multibulk request at the start of `buf`, and its length; None until it is
/// complete.
///
/// A parser of its own rather than the engine's `RequestScanner`: the benchmark builds the engine with this kit,
/// and a second caller of the scanner changes how the compiler inlines it into the engine's read path (measured:
/// 41 more instructions per round trip). What the engine sends a server is always a well-formed multibulk.
fn split_multibulk(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize, kind: u8) -> Option<(usize, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        assert_eq!(buf[at], kind, "the engine sends servers multibulks of bulk strings");
        let number = std::str::from_utf8(&buf[at + 1..end]).ok().and_then(|n| n.parse().ok());
        Some((number.expect("a length"), end + 2))
    }
    let (count, mut at) = line(buf, 0, b'*')?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, start) = line(buf, at, b'$')?;
        args.push(buf.get(start..start + len)?.to_vec());
        at = start + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((args, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{ReplicationInfo, Role};

    #[test]
    fn info_parses_as_the_engine_expects_and_replicaof_changes_it() {
        let master = ServerAddress { host: "127.0.0.1".into(), port: 7000 };
        let mut server = FakeServer::replica_of(7001, &master).with_offset(42).with_run_id("r1");
        let reply = server.respond(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n");
        let text = reply.strip_prefix(b"+PONG\r\n").expect("PING is answered first");
        let info = ReplicationInfo::parse(text);
        assert_eq!(info.role, Some(Role::Replica));
        assert_eq!(info.master, Some(("127.0.0.1".to_string(), 7000)));
        assert!(info.link_up);
        assert_eq!((info.repl_offset, info.run_id.as_deref()), (42, Some("r1")));
        assert_eq!(&server.answer(&["REPLICAOF", "NO", "ONE"]).unwrap()[..], b"+OK\r\n");
        assert_eq!(ReplicationInfo::parse(server.info.text().as_bytes()).role, Some(Role::Master));
        assert_eq!(server.answer(&["GET", "k"]), None);
    }

    #[test]
    fn requests_split_across_pieces_are_answered_once_complete() {
        let mut server = FakeServer::master(7000);
        assert_eq!(&server.respond(b"*1\r\n$4\r\nPI")[..], b"");
        assert_eq!(&server.respond(b"NG\r\n*1\r\n$5\r\nRESET\r")[..], b"+PONG\r\n");
        assert_eq!(&server.respond(b"\n")[..], b"+RESET\r\n");
    }
}
