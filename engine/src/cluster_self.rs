//! The proxy as cluster-aware clients see it: one node that holds every slot. `CLUSTER SLOTS`, `SHARDS`,
//! `NODES` and `MYID` are answered so, so that a cluster client pointed at the proxy sends everything to the
//! proxy, which routes it; a plain client never asks.

use crate::resp;
use bytes::Bytes;

/// The proxy's node: where clients reach it, and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyNode {
    /// The address clients are told: `bind_address`, or `?` (Redis's "unknown endpoint": connect where you
    /// asked) when it is a wildcard.
    ip: String,
    port: u16,
    /// 40 hex digits, fixed for a listen address, so that it survives a restart.
    id: String,
}

fn bulk(text: &str) -> Vec<u8> {
    resp::bulk_reply(text.as_bytes()).to_vec()
}

impl ProxyNode {
    /// The node of a proxy listening on `bind_address`:`port`.
    pub(crate) fn new(bind_address: &str, port: u16) -> ProxyNode {
        let ip = match bind_address {
            "0.0.0.0" | "::" | "" => "?".to_string(),
            other => other.to_string(),
        };
        // FNV-1a of the listen address, spread over 160 bits.
        let seed = format!("redis-proxy {bind_address}:{port}");
        let mut id = String::with_capacity(40);
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for round in 0..3u8 {
            for &byte in seed.as_bytes().iter().chain(&[round]) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            id.push_str(&format!("{hash:016x}"));
        }
        id.truncate(40);
        ProxyNode { ip, port, id }
    }

    /// `CLUSTER SLOTS`: one range, 0-16383, served by the proxy.
    pub(crate) fn slots(&self) -> Bytes {
        let mut out = b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n".to_vec();
        out.extend(bulk(&self.ip));
        out.extend(format!(":{}\r\n", self.port).into_bytes());
        out.extend(bulk(&self.id));
        Bytes::from(out)
    }

    /// `CLUSTER SHARDS`: one shard, every slot, the proxy its only node (as RESP2 arrays of pairs).
    pub(crate) fn shards(&self) -> Bytes {
        let mut out = b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n*14\r\n".to_vec();
        for (name, value) in [("id", bulk(&self.id)), ("port", format!(":{}\r\n", self.port).into_bytes())] {
            out.extend(bulk(name));
            out.extend(value);
        }
        for (name, value) in [("ip", &self.ip), ("endpoint", &self.ip), ("role", &"master".to_string())] {
            out.extend(bulk(name));
            out.extend(bulk(value));
        }
        out.extend(bulk("replication-offset"));
        out.extend(b":0\r\n");
        out.extend(bulk("health"));
        out.extend(bulk("online"));
        Bytes::from(out)
    }

    /// `CLUSTER NODES`: the proxy's line, holding every slot.
    pub(crate) fn nodes(&self) -> Bytes {
        let ip = if self.ip == "?" { "" } else { &self.ip };
        let line = format!("{} {ip}:{}@0 myself,master - 0 0 1 connected 0-16383\n", self.id, self.port);
        resp::bulk_reply(line.as_bytes())
    }

    /// `CLUSTER MYID`.
    pub(crate) fn myid(&self) -> Bytes {
        resp::bulk_reply(self.id.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_nodes::{bulk_text, parse_nodes};
    use crate::ServerAddress;

    #[test]
    fn one_node_holds_every_slot() {
        let node = ProxyNode::new("127.0.0.1", 9999);
        assert_eq!(node.id.len(), 40);
        assert_eq!(node, ProxyNode::new("127.0.0.1", 9999), "the id is fixed for an address");
        assert_ne!(node.id, ProxyNode::new("127.0.0.1", 9998).id);
        let slots = node.slots();
        assert!(slots.starts_with(b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:9999\r\n$40\r\n"));
        let asked = ServerAddress { host: "127.0.0.1".into(), port: 9999 };
        let frame = node.nodes();
        let nodes = parse_nodes(bulk_text(&frame).expect("a bulk"), &asked).expect("our own parser reads it");
        assert_eq!(nodes[0].slots, vec![(0, 16383)]);
        assert_eq!(nodes[0].address, Some(asked));
        assert!(node.shards().starts_with(b"*1\r\n*4\r\n$5\r\nslots\r\n"));
        assert!(ProxyNode::new("0.0.0.0", 1).slots().windows(7).any(|w| w == b"$1\r\n?\r\n"));
    }
}
