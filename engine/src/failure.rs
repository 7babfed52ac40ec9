//! Why a server cannot be used: what a runtime saw when a connection to it failed ([`ConnectFailure`]), what the
//! engine keeps as the last obstacle per server ([`Obstacle`]), and the few words a client's error gets from it.
//!
//! The words for a client never hold a secret or a certificate's content (no names, no dates): they say which
//! kind of fault it is; the log line the runtime wrote says the rest.

/// Why a connection to a server could not be made, in the kinds an operator acts on differently. The runtime
/// classifies what it saw (it knows sockets and TLS; the engine does not) and hands it in with
/// [`crate::Input::ConnectFailed`], beside the full text for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The connect timed out (`ETIMEDOUT`).
    TimedOut,
    /// No route to the host or its network (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// The proxy refused the certificate the server presented in its TLS handshake.
    Certificate(CertificateProblem),
    /// The server ended the TLS handshake with an alert: it wants a client certificate, refuses the proxy's, or
    /// has no protocol version in common.
    TlsRefusedByServer,
    /// The TLS handshake failed otherwise: the server does not speak TLS on that port, or closed during it.
    TlsHandshake,
    /// Anything else (a name that does not resolve, no file descriptors left ...).
    Other,
}

/// What is wrong with a server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Its validity period has ended.
    Expired,
    /// Its validity period has not begun.
    NotYetValid,
    /// It does not name the host the proxy connects to (or `server_tls.server_name`).
    WrongName,
    /// It is not signed by a CA in `server_tls.ca_file`.
    UnknownIssuer,
    /// It is a CA certificate (`CA:TRUE`) that the server presents as its own, and it is not pinned.
    CaAsServerCertificate,
    /// Anything else (a bad signature, a wrong key usage, an encoding webpki does not accept ...).
    Other,
}

impl ConnectFailure {
    /// A few words for a client's error: the kind of fault, no certificate content.
    pub fn brief(self) -> &'static str {
        match self {
            ConnectFailure::TimedOut => "timed out",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Certificate(problem) => match problem {
                CertificateProblem::Expired => "TLS certificate refused (expired)",
                CertificateProblem::NotYetValid => "TLS certificate refused (not yet valid)",
                CertificateProblem::WrongName => "TLS certificate refused (not valid for this name)",
                CertificateProblem::UnknownIssuer => "TLS certificate refused (unknown CA)",
                CertificateProblem::CaAsServerCertificate => "TLS certificate refused (a CA certificate)",
                CertificateProblem::Other => "TLS certificate refused",
            },
            ConnectFailure::TlsRefusedByServer => "TLS refused by the server",
            ConnectFailure::TlsHandshake => "TLS handshake failed",
            ConnectFailure::Other => "connect failed",
        }
    }

    /// The evidence for a server that counts as down because every new connection failed this way, for the
    /// `is down` log line and the status page.
    pub(crate) fn down_reason(self) -> &'static str {
        match self {
            ConnectFailure::TimedOut => "timed out: no valid reply for down_after, and new connections time out",
            ConnectFailure::Other => "connect failed: no valid reply for down_after, and new connections fail",
            ConnectFailure::Unreachable => "unreachable: no valid reply for down_after, and its host is unreachable",
            ConnectFailure::Certificate(CertificateProblem::Expired) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate (expired)"
            }
            ConnectFailure::Certificate(CertificateProblem::NotYetValid) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate (not yet valid)"
            }
            ConnectFailure::Certificate(CertificateProblem::WrongName) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate (not valid \
                 for this name)"
            }
            ConnectFailure::Certificate(CertificateProblem::UnknownIssuer) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate (not signed \
                 by a CA in server_tls.ca_file)"
            }
            ConnectFailure::Certificate(CertificateProblem::CaAsServerCertificate) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate (a CA \
                 certificate used as the server's own)"
            }
            ConnectFailure::Certificate(CertificateProblem::Other) => {
                "TLS refused: no valid reply for down_after because the proxy refuses its certificate"
            }
            ConnectFailure::TlsRefusedByServer => {
                "TLS refused: no valid reply for down_after because it refuses the proxy's TLS handshake"
            }
            ConnectFailure::TlsHandshake => {
                "TLS refused: no valid reply for down_after because every TLS handshake fails"
            }
        }
    }
}

/// The last thing that kept a server from being used, kept until it answers a probe again (or, for credentials,
/// until it accepts them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Obstacle {
    /// A connect was refused: its process is gone.
    Refused,
    /// A connect failed this way.
    Connect(ConnectFailure),
    /// It gave no valid reply for `down_after` and new connections timed out.
    NoReply,
    /// It is alive but did not answer for `busy_down_after`.
    Busy,
    /// It refuses the proxy's credentials: the first word of its reply (`WRONGPASS`, `NOAUTH`), which holds no
    /// secret.
    Credentials(String),
}

impl Obstacle {
    /// The obstacle of a server that refused the proxy's credentials with `reply` (an error frame).
    pub(crate) fn credentials(reply: &[u8]) -> Obstacle {
        let text = reply.strip_prefix(b"-").unwrap_or(reply);
        let word: String = text
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .take(32)
            .map(|&b| char::from(b))
            .collect();
        Obstacle::Credentials(if word.is_empty() { "credentials refused".to_string() } else { word })
    }

    /// A few words for a client's error.
    pub(crate) fn brief(&self) -> &str {
        match self {
            Obstacle::Refused => "refused",
            Obstacle::Connect(failure) => failure.brief(),
            Obstacle::NoReply => "timed out",
            Obstacle::Busy => "busy",
            Obstacle::Credentials(word) => word,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{config, connects, port_of, sent_on, Driver};
    use crate::Event;
    use std::time::Duration;

    #[test]
    fn a_held_request_fails_naming_each_servers_last_obstacle_and_the_down_line_its_evidence() {
        let mut settings = config(2);
        settings.check_period = Duration::from_millis(100);
        settings.down_after = Duration::from_millis(300);
        settings.hold = Duration::from_millis(1000);
        let mut kit = Driver::new(settings);
        let client = kit.accept();
        kit.feed(client, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let certificate = ConnectFailure::Certificate(CertificateProblem::Expired);
        let mut replies = Vec::new();
        let mut events = Vec::new();
        for _ in 0..15 {
            kit.advance(Duration::from_millis(100));
            let actions = kit.drain();
            replies.extend(sent_on(&actions, client));
            for (conn, address) in connects(&actions) {
                // Server 0's TLS certificate is refused; nothing listens on server 1's port.
                if address.port == port_of(0) {
                    kit.connect_failed_with(conn, "TLS with server ... failed: its certificate expired", certificate);
                } else {
                    kit.refused(conn);
                }
            }
            replies.extend(sent_on(&kit.drain(), client));
            events.extend(kit.events());
        }
        let expected = format!(
            "-MASTERDOWN no master is available: redis-proxy held the request for 1000 ms (127.0.0.1:{}: TLS \
             certificate refused (expired); 127.0.0.1:{}: refused)\r\n",
            port_of(0),
            port_of(1)
        );
        assert_eq!(String::from_utf8_lossy(&replies), expected);
        let down: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::ServerDown { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert!(down.contains(&certificate.down_reason()), "{down:?}");
        assert!(down.iter().any(|r| r.starts_with("refused: ")), "{down:?}");
        let logged = events.iter().filter(|e| matches!(e, Event::ConnectFailed { .. })).count();
        assert_eq!(logged, 1, "the same reason is logged once, also across the server going down: {events:?}");
    }

    #[test]
    fn the_credentials_word_is_the_error_code_alone() {
        let wrongpass = Obstacle::credentials(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
        assert_eq!(wrongpass.brief(), "WRONGPASS");
        assert_eq!(Obstacle::credentials(b"-NOAUTH Authentication required.").brief(), "NOAUTH");
        assert_eq!(Obstacle::credentials(b"- odd").brief(), "credentials refused");
    }

    #[test]
    fn briefs_name_no_certificate_content() {
        let all = [
            CertificateProblem::Expired,
            CertificateProblem::NotYetValid,
            CertificateProblem::WrongName,
            CertificateProblem::UnknownIssuer,
            CertificateProblem::CaAsServerCertificate,
            CertificateProblem::Other,
        ];
        for problem in all {
            let failure = ConnectFailure::Certificate(problem);
            assert!(failure.brief().starts_with("TLS certificate refused"), "{}", failure.brief());
            assert!(failure.down_reason().starts_with("TLS refused"), "{}", failure.down_reason());
        }
    }
}
