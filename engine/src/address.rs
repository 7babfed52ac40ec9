//! Where a server is: [`ServerAddress`], its parsing from `host:port`, and how a server's own report of another
//! server's address is matched against it.

use std::fmt;

/// One configured Redis server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddress {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ServerAddress {
    /// Parses `host:port` (`[v6]:port` for IPv6); None unless the host is valid and the port is 1-65535.
    pub(crate) fn parse(text: &str) -> Option<ServerAddress> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
        valid_host(host).then(|| ServerAddress { host: host.to_string(), port })
    }

    /// Whether `host:port`, as a server reports it (a replica's `master_host`, a sentinel's answer), names this
    /// address: the same port, and the same host or both loopback.
    pub(crate) fn is_named(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let loopback = |h: &str| h == "localhost" || h == "::1" || h.starts_with("127.");
        host.eq_ignore_ascii_case(&self.host) || (loopback(host) && loopback(&self.host))
    }
}

/// Whether `host` is syntactically an IP address or a DNS host name (letters, digits, hyphens and dots, labels of
/// 1-63 characters not starting or ending with a hyphen): caught by `--check` rather than when binding fails.
pub(crate) fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_match() {
        let addr = ServerAddress { host: "localhost".into(), port: 1 };
        assert!(addr.is_named("127.0.0.1", 1));
        assert!(!addr.is_named("127.0.0.1", 2));
        assert!(!addr.is_named("10.0.0.1", 1));
    }

    #[test]
    fn parses_host_and_port() {
        let parsed = |text| ServerAddress::parse(text).map(|a| a.to_string());
        assert_eq!(parsed("127.0.0.1:7000").as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(parsed("[::1]:7000").as_deref(), Some("[::1]:7000"));
        assert_eq!(parsed("redis-1.local:6379").as_deref(), Some("redis-1.local:6379"));
        assert_eq!(parsed("127.0.0.1:0"), None);
        assert_eq!(parsed("127.0.0.1"), None);
        assert_eq!(parsed("bad host:1"), None);
    }
}
