//! The replies of a cluster node that send a request elsewhere or ask for it again: `MOVED`, `ASK`,
//! `TRYAGAIN` and `CLUSTERDOWN`.

use crate::address::ServerAddress;

/// What a cluster node's error reply asks of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// `-MOVED slot host:port`: the slot is served there now; send it there, and fix the map.
    Moved { slot: u16, address: ServerAddress },
    /// `-ASK slot host:port`: this key is being migrated there; send `ASKING` and the request there, once.
    Ask { slot: u16, address: ServerAddress },
    /// `-TRYAGAIN`: a multi-key request meets a slot half migrated; send it again shortly.
    TryAgain,
    /// `-CLUSTERDOWN`: the node does not serve the slot now (a failover is under way); send it again once the
    /// cluster has recovered.
    ClusterDown,
}

/// The redirection a reply frame is, if it is one. Cheap for every other reply: one byte is looked at first.
#[inline]
pub(crate) fn redirect_of(frame: &[u8]) -> Option<Redirect> {
    if frame.first() != Some(&b'-') {
        return None;
    }
    parse(frame)
}

#[cold]
fn parse(frame: &[u8]) -> Option<Redirect> {
    let line = frame.get(1..frame.len().checked_sub(2)?)?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let kind = words.next()?;
    let target = |mut words: std::str::Split<'_, char>| -> Option<(u16, ServerAddress)> {
        let slot = words.next()?.parse::<u16>().ok().filter(|s| usize::from(*s) < crate::slot::SLOTS)?;
        let endpoint = words.next()?;
        let colon = endpoint.rfind(':')?;
        let port = endpoint[colon + 1..].parse().ok().filter(|p| *p != 0)?;
        Some((slot, ServerAddress { host: endpoint[..colon].to_string(), port }))
    };
    match kind {
        "MOVED" => target(words).map(|(slot, address)| Redirect::Moved { slot, address }),
        "ASK" => target(words).map(|(slot, address)| Redirect::Ask { slot, address }),
        "TRYAGAIN" => Some(Redirect::TryAgain),
        "CLUSTERDOWN" => Some(Redirect::ClusterDown),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> ServerAddress {
        ServerAddress { host: "127.0.0.1".into(), port }
    }

    #[test]
    fn reads_each_kind() {
        assert_eq!(
            redirect_of(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved { slot: 3999, address: at(6381) })
        );
        assert_eq!(redirect_of(b"-ASK 3999 127.0.0.1:6381\r\n"), Some(Redirect::Ask { slot: 3999, address: at(6381) }));
        assert_eq!(
            redirect_of(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(redirect_of(b"-CLUSTERDOWN The cluster is down\r\n"), Some(Redirect::ClusterDown));
        let ipv6 = redirect_of(b"-MOVED 1 ::1:7000\r\n");
        assert_eq!(ipv6, Some(Redirect::Moved { slot: 1, address: ServerAddress { host: "::1".into(), port: 7000 } }));
    }

    #[test]
    fn other_replies_are_not_redirections() {
        assert_eq!(redirect_of(b"+OK\r\n"), None);
        assert_eq!(redirect_of(b"-ERR unknown command\r\n"), None);
        assert_eq!(redirect_of(b"-MOVED 16384 127.0.0.1:1\r\n"), None);
        assert_eq!(redirect_of(b"-MOVED 1 nowhere\r\n"), None);
        assert_eq!(redirect_of(b"-MOVED 1 127.0.0.1:0\r\n"), None);
        assert_eq!(redirect_of(b"-"), None);
    }
}
