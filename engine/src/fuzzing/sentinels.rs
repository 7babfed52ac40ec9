//! How the fuzzed sentinels answer: `SENTINEL get-master-addr-by-name` and `SENTINEL replicas` from what each one
//! says now (a master and replicas of the universe, under their own or another name), well-formed or, as a
//! flavour byte picks, malformed; `HELLO 3` and `SUBSCRIBE`; and the events they publish.

use crate::address::ServerAddress;
use crate::resp::Request;

/// The universe index a sentinel names as the master by default (the test kit's first server is the master).
const FIRST_MASTER: usize = 0;

/// What one fuzzed sentinel says, and whether it runs.
#[derive(Clone, Debug)]
pub(super) struct FakeSentinel {
    /// The master it names (a universe index), or None: it does not know the name.
    pub(super) master: Option<usize>,
    /// The replicas it lists (a mask of the universe) and which of them are healthy.
    pub(super) listed: u8,
    pub(super) healthy: u8,
    /// Names every server `localhost` rather than `127.0.0.1`: the same processes under other addresses.
    pub(super) alias: bool,
    /// Runs: connections to it complete.
    pub(super) up: bool,
}

impl Default for FakeSentinel {
    /// Names the test kit's master and lists servers 1 and 2 as healthy replicas.
    fn default() -> FakeSentinel {
        FakeSentinel { master: Some(FIRST_MASTER), listed: 0b0110, healthy: 0b0110, alias: false, up: true }
    }
}

/// The servers an answer named, by exact address: what the engine may learn from it.
#[derive(Debug, Default)]
pub(super) struct Named {
    pub(super) master: Option<ServerAddress>,
    /// Every replica listed, with whether it was listed healthy.
    pub(super) replicas: Vec<(ServerAddress, bool)>,
}

impl FakeSentinel {
    /// The address it names universe server `index` by.
    fn address(&self, universe: &[ServerAddress], index: usize) -> ServerAddress {
        let host = if self.alias { "localhost" } else { "127.0.0.1" };
        ServerAddress { host: host.into(), port: universe[index].port }
    }

    /// Appends to `out` the sentinel's reply to `request` (`flavor` may make it malformed) and returns the
    /// servers a well-formed reply named.
    pub(super) fn answer(&self, universe: &[ServerAddress], request: &Request, flavor: u8, out: &mut Vec<u8>) -> Named {
        let mut named = Named::default();
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        let sub = request.arg(1).unwrap_or_default().to_ascii_lowercase();
        match (name.as_slice(), sub.as_slice()) {
            (b"HELLO", _) => out.extend_from_slice(b"%1\r\n$5\r\nproto\r\n:3\r\n"),
            (b"AUTH", _) => out.extend_from_slice(b"+OK\r\n"),
            (b"SUBSCRIBE", _) => {
                for (n, channel) in request.args().skip(1).enumerate() {
                    out.extend_from_slice(b">3\r\n$9\r\nsubscribe\r\n");
                    out.extend_from_slice(&bulk(channel));
                    out.extend_from_slice(format!(":{}\r\n", n + 1).as_bytes());
                }
            }
            _ if flavor % 8 == 7 => out.extend_from_slice(malformed(&sub, flavor / 8)),
            (b"SENTINEL", b"get-master-addr-by-name") => match self.master {
                Some(index) => {
                    let address = self.address(universe, index);
                    out.extend_from_slice(b"*2\r\n");
                    out.extend_from_slice(&bulk(address.host.as_bytes()));
                    out.extend_from_slice(&bulk(address.port.to_string().as_bytes()));
                    named.master = Some(address);
                }
                // RESP2's nil array and RESP3's null: both say "no such master".
                None if flavor % 2 == 0 => out.extend_from_slice(b"*-1\r\n"),
                None => out.extend_from_slice(b"_\r\n"),
            },
            (b"SENTINEL", b"replicas") => {
                let listed: Vec<usize> = (0..universe.len()).filter(|i| self.listed & (1 << i) != 0).collect();
                out.extend_from_slice(format!("*{}\r\n", listed.len()).as_bytes());
                for index in listed {
                    let address = self.address(universe, index);
                    let healthy = self.healthy & (1 << index) != 0;
                    // An unhealthy replica is flagged down, or its link to the master is down.
                    let (flags, link): (&[u8], &[u8]) = match (healthy, flavor % 2) {
                        (true, _) => (b"slave", b"ok"),
                        (false, 0) => (b"s_down,slave", b"ok"),
                        (false, _) => (b"slave,disconnected", b"err"),
                    };
                    let port = address.port.to_string();
                    let fields: [(&[u8], &[u8]); 4] = [
                        (b"ip", address.host.as_bytes()),
                        (b"port", port.as_bytes()),
                        (b"flags", flags),
                        (b"master-link-status", link),
                    ];
                    // RESP3 sentinels answer with maps.
                    out.extend_from_slice(if flavor % 4 == 3 { b"%4\r\n" } else { b"*8\r\n" });
                    for (key, value) in fields {
                        out.extend_from_slice(&bulk(key));
                        out.extend_from_slice(&bulk(value));
                    }
                    named.replicas.push((address, healthy));
                }
            }
            _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
        }
        named
    }
}

/// A bulk string.
fn bulk(value: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

/// A reply to the sentinel question `sub` that names no server: an error, wrong shapes, an address that is no
/// address, or bytes that are no reply at all.
fn malformed(sub: &[u8], variant: u8) -> &'static [u8] {
    let master = sub == b"get-master-addr-by-name";
    match (variant % 8, master) {
        (0, _) => b"-ERR No such master with that name\r\n",
        (1, true) => b"*2\r\n$9\r\n127.0.0.1\r\n$5\r\n99999\r\n",
        (1, false) => b"*2\r\n*2\r\n$2\r\nip\r\n$1\r\n?\r\n*4\r\n$4\r\nport\r\n$1\r\n0\r\n$2\r\nip\r\n$0\r\n\r\n",
        (2, true) => b"*1\r\n$1\r\nx\r\n",
        (2, false) => b":5\r\n",
        (3, true) => b"*2\r\n$9\r\n127.0.0.1\r\n$1\r\n0\r\n",
        (3, false) => b"*1\r\n:1\r\n",
        (4, _) => b"*3\r\n:1\r\n:2\r\n:3\r\n",
        (5, _) => b"+OK\r\n",
        (6, _) => b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        // No reply at all: the connection is out of step, and closed.
        _ => b"?bad\r\n",
    }
}

/// The event sentinel `port` publishes, `kind` picking which: a `+switch-master` naming `master` (a universe port),
/// another subscribed channel, one the proxy never subscribed to, or pushes of the wrong shape.
pub(super) fn event(kind: u8, master: u16) -> Vec<u8> {
    let message = |channel: &str, payload: &str| {
        let mut out = b">3\r\n$7\r\nmessage\r\n".to_vec();
        out.extend_from_slice(&bulk(channel.as_bytes()));
        out.extend_from_slice(&bulk(payload.as_bytes()));
        out
    };
    match kind % 6 {
        0 | 1 => message("+switch-master", &format!("mymaster 127.0.0.1 7000 127.0.0.1 {master}")),
        2 => message("+sdown", &format!("slave 127.0.0.1:{master} 127.0.0.1 {master} @ mymaster 127.0.0.1 7000")),
        3 => message("+tilt", "#tilt mode entered"),
        4 => b">2\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n".to_vec(),
        _ => b">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$5\r\n+odown\r\n$6\r\nmaster\r\n".to_vec(),
    }
}
