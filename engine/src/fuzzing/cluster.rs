//! How the fuzzed cluster answers, for the cluster target: `CLUSTER INFO` and `CLUSTER NODES` from a model the
//! input reshapes (primaries that come and go among the universe's addresses, slot ranges with or without gaps,
//! epochs up to absurd, failed nodes, nodes without an address, migration brackets, a minority's
//! `cluster_state:fail`, or raw bytes), and the data commands with what a flavour byte picks: a plausible reply,
//! `MOVED` or `ASK` to any address of the universe, `TRYAGAIN`, `CLUSTERDOWN`, `CROSSSLOT`, an error, or a
//! malformed redirection.

use crate::address::ServerAddress;
use crate::resp::Request;
use crate::slot::{key_slot, SLOTS};

/// What the cluster's nodes say of it, as the input last shaped it.
#[derive(Clone, Debug)]
pub(super) struct ClusterModel {
    /// The universe's nodes that are primaries (a mask).
    pub(super) primaries: u8,
    /// How the `CLUSTER NODES` text is shaped (see [`ClusterModel::nodes_text`]).
    pub(super) style: u8,
    /// Picks the config epochs.
    pub(super) epochs: u8,
    /// Per node: raw bytes it answers to `CLUSTER NODES` instead of the model's text.
    pub(super) raw: Vec<Option<Vec<u8>>>,
}

fn bulk(text: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", text.len()).into_bytes();
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
    out
}

fn node_id(index: usize) -> String {
    format!("{:040x}", index + 1)
}

impl ClusterModel {
    /// A model of `nodes` addresses whose first `seeds` are primaries, the slots spread over them.
    pub(super) fn new(nodes: usize, seeds: usize) -> ClusterModel {
        ClusterModel { primaries: (1u8 << seeds) - 1, style: 0, epochs: 1, raw: vec![None; nodes] }
    }

    /// The `CLUSTER INFO` reply of node `asked`: `cluster_state:fail` when the style says it is in a minority
    /// (bit 0, for every node but the first primary).
    pub(super) fn info(&self, asked: usize) -> Vec<u8> {
        let first_primary = (0..8).find(|i| self.primaries & (1 << i) != 0);
        let minority = self.style & 1 != 0 && Some(asked) != first_primary;
        let state = if minority { "fail" } else { "ok" };
        bulk(format!("cluster_state:{state}\r\ncluster_enabled:1\r\ncluster_known_nodes:8\r\n").as_bytes())
    }

    /// The `CLUSTER NODES` reply of node `asked` of `universe`. Style bits: 1 uneven ranges with gaps, 2 absurd epochs, 3 a failed node, 4 a
    /// node without an address, 5 its own line without a host, 6 migration brackets, 7 a malformed line.
    pub(super) fn nodes_text(&self, asked: usize, universe: &[ServerAddress]) -> Vec<u8> {
        if let Some(raw) = self.raw.get(asked).cloned().flatten() {
            return bulk(&raw);
        }
        // The mask covers the first 8 nodes; those a raw answer named beyond them are replicas.
        let primaries: Vec<usize> = (0..universe.len().min(8)).filter(|i| self.primaries & (1 << i) != 0).collect();
        let mut text = String::new();
        let has = |bit: u8| self.style & (1 << bit) != 0;
        for (index, address) in universe.iter().enumerate() {
            let primary_at = primaries.iter().position(|p| *p == index);
            let epoch = if has(2) {
                u64::MAX - (index as u64 * u64::from(self.epochs))
            } else {
                u64::from(self.epochs).wrapping_mul(index as u64 + 1) % 1000
            };
            let myself = if index == asked { "myself," } else { "" };
            let failed = has(3) && index % 3 == usize::from(self.epochs) % 3;
            let fail = if failed { ",fail" } else { "" };
            let noaddr = has(4) && index == 7;
            let endpoint = if noaddr {
                ":0@0".to_string()
            } else if has(5) && index == asked {
                format!(":{}@{}", address.port, u32::from(address.port) + 10000)
            } else {
                format!("{}:{}@{}", address.host, address.port, u32::from(address.port) + 10000)
            };
            let (role, of) = match primary_at {
                Some(_) => ("master", "-".to_string()),
                None if primaries.is_empty() => ("master", "-".to_string()),
                None => ("slave", node_id(primaries[index % primaries.len()])),
            };
            let noaddr_flag = if noaddr { ",noaddr" } else { "" };
            let mut line =
                format!("{} {endpoint} {myself}{role}{fail}{noaddr_flag} {of} 0 0 {epoch} connected", node_id(index));
            if let Some(at) = primary_at {
                let count = primaries.len();
                let (mut first, mut last) = (SLOTS * at / count, SLOTS * (at + 1) / count - 1);
                if has(1) {
                    // Uneven, with a gap before each range.
                    first = (first + usize::from(self.epochs) * (at + 1)).min(last);
                    last = last.saturating_sub(usize::from(self.epochs) % 7);
                    last = last.max(first);
                }
                line.push_str(&format!(" {first}-{last}"));
                if has(1) && at == 0 {
                    line.push_str(&format!(" {}", SLOTS - 1));
                }
                if has(6) {
                    let other = node_id(primaries[(at + 1) % count]);
                    line.push_str(&format!(" [{first}->-{other}] [{last}-<-{other}]"));
                }
            }
            if has(7) && index == usize::from(self.epochs) % universe.len() {
                line = format!("{} {endpoint} master - x", node_id(index));
            }
            text.push_str(&line);
            text.push('\n');
        }
        bulk(text.as_bytes())
    }
}

/// The keys of a data command the fuzzed node answers, by its name.
fn keys_of(request: &Request) -> Vec<&[u8]> {
    let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&[u8]> = request.args().skip(1).collect();
    match name.as_slice() {
        b"MSET" | b"MSETNX" => args.iter().step_by(2).copied().collect(),
        b"MGET" | b"DEL" | b"EXISTS" | b"TOUCH" | b"UNLINK" | b"RENAME" => args,
        b"GET" | b"SET" | b"INCR" | b"SPUBLISH" => args.into_iter().take(1).collect(),
        b"SSUBSCRIBE" | b"SUNSUBSCRIBE" => args,
        _ => Vec::new(),
    }
}

/// What a node answers to a data command, by `flavor`: 0-7 a reply of the command's shape (values, `OK`,
/// counts, the `ECHO`ed argument), 8 `MOVED`, 9 `ASK` (to `universe[target]`, for the slot of the first key or a
/// made-up one), 10 `TRYAGAIN`, 11 `CLUSTERDOWN`, 12 `CROSSSLOT`, 13 an error, 14 a malformed redirection, 15 a
/// reply of another shape. A redirection names the universe's address `target` (mod its size; `localhost` for
/// its host when the high bit is set).
pub(super) fn answer_data(request: &Request, flavor: u8, target: u8, universe: &[ServerAddress], out: &mut Vec<u8>) {
    let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
    if name == b"ASKING" {
        out.extend_from_slice(if flavor % 16 == 13 { b"-ERR no ASKING here\r\n" } else { b"+OK\r\n" });
        return;
    }
    let keys = keys_of(request);
    let slot = keys.first().map_or(u16::from(target) * 61, |k| key_slot(k));
    let to = &universe[usize::from(target & 0x7F) % universe.len()];
    let host = if target & 0x80 != 0 { "localhost" } else { to.host.as_str() };
    match flavor % 16 {
        8 | 9 => {
            let kind = if flavor % 16 == 8 { "MOVED" } else { "ASK" };
            out.extend_from_slice(format!("-{kind} {slot} {host}:{}\r\n", to.port).as_bytes());
        }
        10 => out.extend_from_slice(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
        11 => out.extend_from_slice(b"-CLUSTERDOWN The cluster is down\r\n"),
        12 => out.extend_from_slice(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"),
        13 => out.extend_from_slice(b"-ERR fuzz\r\n"),
        14 => out.extend_from_slice(
            [&b"-MOVED 16384 127.0.0.1:7000\r\n"[..], b"-ASK 1\r\n", b"-MOVED x y\r\n", b"-MOVED 1 127.0.0.1:0\r\n"]
                [usize::from(target) % 4],
        ),
        15 => out.extend_from_slice(b"*2\r\n%1\r\n+a\r\n:1\r\n$1\r\nz\r\n"),
        _ => match name.as_slice() {
            b"GET" if flavor % 2 == 0 => out.extend_from_slice(b"$-1\r\n"),
            b"GET" => out.extend_from_slice(b"$1\r\nv\r\n"),
            b"MGET" => {
                out.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
                for i in 0..keys.len() {
                    out.extend_from_slice(if (i + usize::from(flavor)) % 2 == 0 { b"$-1\r\n" } else { b"$1\r\nv\r\n" });
                }
            }
            b"INCR" | b"DEL" | b"EXISTS" | b"TOUCH" | b"UNLINK" => {
                out.extend_from_slice(format!(":{}\r\n", usize::from(flavor) % (keys.len() + 1)).as_bytes())
            }
            b"ECHO" => out.extend_from_slice(&bulk(request.arg(1).unwrap_or_default())),
            // A confirmation per channel; on flavor 7, then a message and the node dropping the channel (its
            // slot moved away).
            b"SSUBSCRIBE" | b"SUNSUBSCRIBE" => {
                let kind = String::from_utf8_lossy(&name).to_ascii_lowercase();
                for (n, channel) in keys.iter().enumerate() {
                    out.extend_from_slice(format!("*3\r\n${}\r\n{kind}\r\n", kind.len()).as_bytes());
                    out.extend_from_slice(&bulk(channel));
                    out.extend_from_slice(format!(":{}\r\n", n + 1).as_bytes());
                }
                if flavor % 8 == 7 {
                    for channel in &keys {
                        out.extend_from_slice(b"*3\r\n$8\r\nsmessage\r\n");
                        out.extend_from_slice(&bulk(channel));
                        out.extend_from_slice(b"$1\r\nm\r\n*3\r\n$12\r\nsunsubscribe\r\n");
                        out.extend_from_slice(&bulk(channel));
                        out.extend_from_slice(b":0\r\n");
                    }
                }
            }
            b"SPUBLISH" => out.extend_from_slice(b":1\r\n"),
            b"PING" => out.extend_from_slice(b"+PONG\r\n"),
            b"DBSIZE" => out.extend_from_slice(b":3\r\n"),
            _ => out.extend_from_slice(b"+OK\r\n"),
        },
    }
}
