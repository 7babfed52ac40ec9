//! What one cluster node says of the cluster: the lines of its `CLUSTER NODES` reply, and whether its
//! `CLUSTER INFO` says `cluster_state:ok`.
//!
//! `CLUSTER NODES` is read rather than `CLUSTER SHARDS` or `CLUSTER SLOTS` because it alone carries each node's
//! config epoch and its `fail` flag, which decide whether a map is newer than the one the proxy holds, and it is
//! answered by every Redis version that has a cluster.

use crate::address::ServerAddress;

/// One node of a `CLUSTER NODES` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    /// The node's id (40 hex characters).
    pub(crate) id: String,
    /// Where clients reach it (None: the node has no address yet, `noaddr`).
    pub(crate) address: Option<ServerAddress>,
    /// It is a primary (`master`); otherwise a replica of `primary_id`.
    pub(crate) primary: bool,
    /// The primary a replica follows.
    pub(crate) primary_id: Option<String>,
    /// The cluster agreed it failed (`fail`; a lone `fail?` is only the answering node's suspicion).
    pub(crate) failed: bool,
    /// Its config epoch: a primary's claim on its slots wins over any with a lower epoch.
    pub(crate) config_epoch: u64,
    /// The slot ranges it serves, inclusive (migration entries in brackets are left out: the owner still serves
    /// the slot, and `ASK` says when a key has moved).
    pub(crate) slots: Vec<(u16, u16)>,
}

/// The text of a bulk (RESP2 `$`) or verbatim (RESP3 `=`, `txt:` prefix) string reply; None for anything else
/// (an error: the node is not in cluster mode, or refuses).
pub(crate) fn bulk_text(frame: &[u8]) -> Option<&[u8]> {
    let kind = *frame.first()?;
    if kind != b'$' && kind != b'=' {
        return None;
    }
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    let body = frame.get(header_end..frame.len().checked_sub(2)?)?;
    if kind == b'=' {
        return body.get(4..);
    }
    Some(body)
}

/// Whether a `CLUSTER INFO` text says the answering node sees a working cluster (`cluster_state:ok`): it is in
/// the majority and every slot is served.
pub(crate) fn state_ok(info: &[u8]) -> bool {
    info.split(|&b| b == b'\n').any(|line| line.strip_suffix(b"\r").unwrap_or(line) == b"cluster_state:ok")
}

/// The nodes of a `CLUSTER NODES` text; `asked` is the node that answered (its own line may lack a host before
/// it has learnt its address). A malformed line makes the whole reply unusable.
pub(crate) fn parse_nodes(text: &[u8], asked: &ServerAddress) -> Result<Vec<NodeEntry>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "CLUSTER NODES is not text".to_string())?;
    let mut nodes = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        nodes.push(parse_line(line, asked).ok_or_else(|| format!("unreadable CLUSTER NODES line: {line:.120}"))?);
    }
    if nodes.is_empty() {
        return Err("CLUSTER NODES names no node".to_string());
    }
    Ok(nodes)
}

fn parse_line(line: &str, asked: &ServerAddress) -> Option<NodeEntry> {
    let mut fields = line.split(' ');
    let id = fields.next()?.to_string();
    let endpoint = fields.next()?;
    let flags: Vec<&str> = fields.next()?.split(',').collect();
    let primary_id = fields.next()?;
    let _ping_sent = fields.next()?;
    let _pong_received = fields.next()?;
    let config_epoch = fields.next()?.parse().ok()?;
    let _link_state = fields.next()?;
    let has = |flag: &str| flags.contains(&flag);
    let address = if has("noaddr") {
        None
    } else {
        // `host:port@cport` or `host:port@cport,hostname`; an IPv6 host has colons of its own.
        let host_port = endpoint.split(['@', ',']).next()?;
        let colon = host_port.rfind(':')?;
        let port = host_port[colon + 1..].parse().ok().filter(|p| *p != 0)?;
        let host = &host_port[..colon];
        match host {
            "" if has("myself") => Some(ServerAddress { host: asked.host.clone(), port }),
            "" => None,
            _ => Some(ServerAddress { host: host.to_string(), port }),
        }
    };
    let mut slots = Vec::new();
    for range in fields.filter(|f| !f.starts_with('[')) {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let slot = range.parse().ok()?;
                (slot, slot)
            }
        };
        if first > last || usize::from(last) >= crate::slot::SLOTS {
            return None;
        }
        slots.push((first, last));
    }
    Some(NodeEntry {
        id,
        address,
        primary: has("master"),
        primary_id: (primary_id != "-").then(|| primary_id.to_string()),
        failed: has("fail"),
        config_epoch,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port: 7000 }
    }

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [10924->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005,node-5.example slave,fail 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 disconnected
";

    #[test]
    fn reads_every_field_that_routing_needs() {
        let nodes = parse_nodes(NODES.as_bytes(), &asked()).expect("valid");
        assert_eq!(nodes.len(), 5);
        let replica = &nodes[0];
        assert!(!replica.primary);
        assert_eq!(replica.primary_id.as_deref(), Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"));
        assert_eq!(replica.address, Some(ServerAddress { host: "127.0.0.1".into(), port: 30004 }));
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert_eq!(nodes[1].config_epoch, 2);
        // A migration entry is not a slot of the node.
        assert_eq!(nodes[2].slots, vec![(10923, 16383)]);
        // Its own line has no host yet: the address it was asked at.
        assert_eq!(nodes[3].address, Some(ServerAddress { host: "127.0.0.1".into(), port: 30001 }));
        assert!(nodes[3].primary && nodes[3].primary_id.is_none());
        assert!(nodes[4].failed);
        assert_eq!(nodes[4].address.as_ref().map(|a| a.port), Some(30005));
    }

    #[test]
    fn a_malformed_line_spoils_the_reply() {
        assert!(parse_nodes(b"abc 127.0.0.1:1@2 master - 0 0 x connected", &asked()).is_err());
        assert!(parse_nodes(b"abc 127.0.0.1:1@2 master - 0 0 1 connected 5-3", &asked()).is_err());
        assert!(parse_nodes(b"abc 127.0.0.1:1@2 master - 0 0 1 connected 0-16384", &asked()).is_err());
        assert!(parse_nodes(b"", &asked()).is_err());
        assert!(parse_nodes(&[0xff, 0xfe], &asked()).is_err());
    }

    #[test]
    fn frames_and_state() {
        assert_eq!(bulk_text(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk_text(b"=7\r\ntxt:abc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk_text(b"-ERR This instance has cluster support disabled\r\n"), None);
        assert!(state_ok(b"cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n"));
        assert!(!state_ok(b"cluster_state:fail\r\n"));
    }
}
