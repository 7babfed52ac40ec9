//! Why a server cannot be used: what a runtime saw when a connection to it failed ([`ConnectFailure`]), what the
//! engine keeps per server ([`Failures`]: the last [`Obstacle`], refused credentials, the connect failures seen,
//! the reason it is down for), the evidence a silent server is weighed by ([`Evidence`]: gone, busy or
//! unreachable), and the few words a client's error gets from it.
//!
//! The words for a client never hold a secret or a certificate's content (no names, no dates): they say which
//! kind of fault it is; the log line the runtime wrote says the rest.

use std::time::{Duration, Instant};

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

/// What a server that counts as down showed last: the evidence behind the reason it is down for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DownCause {
    /// A connect was refused: its process is gone.
    Refused,
    /// It stayed busy for `busy_down_after`, and the kill sent then did not end it.
    BusyAfterKill,
    /// It was alive (a knock accepted, `-BUSY`, `-LOADING`) but did not answer for `busy_down_after`.
    Busy,
    /// It gave no valid reply for `down_after`, and a knock confirmed that new connections fail: the last one
    /// this way (None: they timed out, or nothing was seen).
    Silent(Option<ConnectFailure>),
}

/// What a server has shown since its last valid reply, beyond silence: proof that its process is alive, knocks
/// that timed out, connects that failed, the kill it was sent. Three kinds of evidence, three answers (Sentinel's experience is the
/// guide):
/// - the process is gone: a connect is refused (a closed probe connection is reopened at once to find out).
///   Down at once.
/// - alive but busy: it answers `-BUSY` or `-LOADING`, or its probe is late while a fresh connection to it (a
///   "knock") is accepted (a long script, `DEBUG SLEEP`, `CLIENT PAUSE`, `SIGSTOP`). Down only after
///   `busy_down_after`; a server still answering `-BUSY` then is sent `SCRIPT KILL` first and gets `down_after`
///   more.
/// - unreachable: silent, and knocks time out (host or network gone). Down after `down_after`, once at least one
///   knock has confirmed it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Evidence {
    /// Knocks that timed out (or connects that failed): the confirmation that a silent server is unreachable.
    knocks_timed_out: u32,
    /// The latest proof of life; cleared by a knock that timed out or a connect that failed.
    alive_at: Option<Instant>,
    /// The last reply was `-BUSY`: the command that ends what keeps it busy.
    kill: Option<&'static str>,
    /// When that command was sent (once per busy spell).
    kill_sent_at: Option<Instant>,
    /// The kind of the last connect failure: what a silent server is down for.
    last_connect_failure: Option<ConnectFailure>,
    /// Why the last connect failed, as reported: a reason that repeats every probe round is reported once, also
    /// across the server going down.
    reported_connect_error: Option<String>,
}

impl Evidence {
    /// What is kept of it once the server went down: the connect failure reported, and nothing else.
    pub(crate) fn after_down(&mut self) -> Evidence {
        Evidence { reported_connect_error: self.reported_connect_error.take(), ..Evidence::default() }
    }

    /// A connect failed for `reason`, of the kind `failure`. Returns whether `reason` is news: not the one already
    /// reported since the server last answered.
    pub(crate) fn connect_error(&mut self, reason: &str, failure: ConnectFailure) -> bool {
        self.last_connect_failure = Some(failure);
        if self.reported_connect_error.as_deref() == Some(reason) {
            return false;
        }
        self.reported_connect_error = Some(reason.to_string());
        true
    }

    /// Its process was alive `now` (a knock was accepted).
    pub(crate) fn alive(&mut self, now: Instant) {
        self.alive_at = Some(now);
    }

    /// A probe reply, if it says the server is alive but busy: that is kept (with the kill that ends a `-BUSY`),
    /// and the words for the log are returned.
    pub(crate) fn busy_reply(&mut self, frame: &[u8], now: Instant) -> Option<&'static str> {
        let evidence = if frame.starts_with(b"-BUSY") {
            let function = memchr::memmem::find(frame, b"FUNCTION KILL").is_some();
            self.kill = Some(if function { "FUNCTION KILL" } else { "SCRIPT KILL" });
            "it answers -BUSY"
        } else if frame.starts_with(b"-LOADING") {
            "it answers -LOADING"
        } else {
            return None;
        };
        self.alive_at = Some(now);
        Some(evidence)
    }

    /// A knock timed out, or a new connection failed without being refused: the host or the network may be gone,
    /// so whatever proved it alive no longer does.
    pub(crate) fn no_proof_of_life(&mut self) {
        self.alive_at = None;
        self.knocks_timed_out += 1;
    }

    /// The kill to send now, if it answered `-BUSY` and none was sent this busy spell.
    pub(crate) fn kill_due(&self) -> Option<&'static str> {
        self.kill.filter(|_| self.kill_sent_at.is_none())
    }

    /// The kill was sent `now`: it gets `down_after` more.
    pub(crate) fn kill_sent(&mut self, now: Instant) {
        self.kill_sent_at = Some(now);
    }

    /// When a server silent since `since` counts as down (given the bounds `down_after` and `busy_down_after`).
    pub(crate) fn down_at(&self, since: Instant, down_after: Duration, busy_down_after: Duration) -> Instant {
        match (self.kill_sent_at, self.alive_at) {
            (Some(sent), _) => sent + down_after,
            (None, Some(_)) => since + busy_down_after,
            (None, None) => since + down_after,
        }
    }

    /// Why a server past its deadline is down; None when nothing says whether it is alive (a knock must decide).
    pub(crate) fn down_cause(&self) -> Option<DownCause> {
        if self.kill_sent_at.is_some() {
            Some(DownCause::BusyAfterKill)
        } else if self.alive_at.is_some() {
            Some(DownCause::Busy)
        } else if self.knocks_timed_out == 0 {
            None
        } else {
            Some(DownCause::Silent(self.last_connect_failure))
        }
    }
}

/// What keeps one server from being used: the last obstacle (what a held request's error names) and whether it
/// refuses the proxy's credentials.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failures {
    obstacle: Option<Obstacle>,
    /// It refuses the proxy's credentials (`WRONGPASS`, `NOAUTH`): alive but not usable, so nothing is routed to
    /// it and it is no master or candidate, yet it is not down (nothing fails over because of it). Its obstacle
    /// stays the refusal until it accepts them.
    credentials_refused: bool,
}

impl Failures {
    /// The last thing that kept it from being used, until it answers a probe again.
    pub(crate) fn obstacle(&self) -> Option<&Obstacle> {
        self.obstacle.as_ref()
    }

    /// Whether it refuses the proxy's credentials.
    pub(crate) fn credentials_refused(&self) -> bool {
        self.credentials_refused
    }

    /// It gave a valid answer: the obstacle is forgotten, unless it is refused credentials.
    pub(crate) fn answered(&mut self) {
        if !self.credentials_refused {
            self.obstacle = None;
        }
    }

    /// A connect failed this way.
    pub(crate) fn connect_failed(&mut self, failure: ConnectFailure) {
        self.set_obstacle(Obstacle::Connect(failure));
    }

    /// A connect was refused: that is the obstacle now, whatever it was.
    pub(crate) fn refused(&mut self) {
        self.obstacle = Some(Obstacle::Refused);
    }

    /// It refused the proxy's credentials with `reply` (an error frame). Returns whether that is news (it took
    /// them until now), to be said loudly once rather than at every probe.
    pub(crate) fn refuse_credentials(&mut self, reply: &[u8]) -> bool {
        // The first refusal says most (`-WRONGPASS` for the AUTH; the commands after it only get `-NOAUTH`).
        if !self.credentials_refused || !matches!(self.obstacle, Some(Obstacle::Credentials(_))) {
            self.obstacle = Some(Obstacle::credentials(reply));
        }
        !std::mem::replace(&mut self.credentials_refused, true)
    }

    /// It accepted the proxy's credentials. Returns whether it refused them until now.
    pub(crate) fn accept_credentials(&mut self) -> bool {
        if matches!(self.obstacle, Some(Obstacle::Credentials(_))) {
            self.obstacle = None;
        }
        std::mem::replace(&mut self.credentials_refused, false)
    }

    /// It counts as down now, for `cause`: returns the reason, for the log and the status page.
    pub(crate) fn went_down(&mut self, cause: DownCause) -> &'static str {
        let (reason, obstacle) = match cause {
            DownCause::Refused => ("refused: a connection to it was refused (its process is gone)", Obstacle::Refused),
            DownCause::BusyAfterKill => ("busy: still busy after busy_down_after and a kill", Obstacle::Busy),
            DownCause::Busy => ("busy: alive but not answering for busy_down_after", Obstacle::Busy),
            // New connections failed, for a reason the runtime saw (a TLS certificate refused ...).
            DownCause::Silent(Some(failure)) => (failure.down_reason(), Obstacle::Connect(failure)),
            DownCause::Silent(None) => {
                ("timed out: no valid reply for down_after, and new connections time out", Obstacle::NoReply)
            }
        };
        self.set_obstacle(obstacle);
        reason
    }

    /// Keeps `obstacle`, unless refused credentials are what keeps the server from being used.
    fn set_obstacle(&mut self, obstacle: Obstacle) {
        if !self.credentials_refused {
            self.obstacle = Some(obstacle);
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
    fn a_connect_error_is_news_once_per_reason_and_a_silent_server_is_down_for_the_last_kind() {
        let mut evidence = Evidence::default();
        let tls = ConnectFailure::Certificate(CertificateProblem::UnknownIssuer);
        assert!(evidence.connect_error("certificate refused", tls));
        assert!(!evidence.connect_error("certificate refused", tls), "the same reason is no news");
        assert!(evidence.connect_error("timed out", ConnectFailure::TimedOut), "a new one is");
        evidence.no_proof_of_life();
        assert_eq!(evidence.down_cause(), Some(DownCause::Silent(Some(ConnectFailure::TimedOut))));
        evidence = evidence.after_down();
        assert_eq!(evidence.down_cause(), None, "nothing else is kept");
        assert!(!evidence.connect_error("timed out", ConnectFailure::TimedOut), "still no news once down");
        evidence = Evidence::default();
        assert!(evidence.connect_error("timed out", ConnectFailure::TimedOut), "news again after an answer");

        let mut failures = Failures::default();
        failures.connect_failed(tls);
        assert_eq!(failures.obstacle(), Some(&Obstacle::Connect(tls)));
        assert_eq!(failures.went_down(DownCause::Silent(Some(tls))), tls.down_reason());
        failures.answered();
        assert_eq!(failures.obstacle(), None);
        let reason = failures.went_down(DownCause::Silent(None));
        assert!(reason.starts_with("timed out: "), "no connect failure seen: {reason}");
        assert_eq!(failures.obstacle(), Some(&Obstacle::NoReply));
    }

    #[test]
    fn refused_credentials_stay_the_obstacle_until_accepted() {
        let mut failures = Failures::default();
        assert!(failures.refuse_credentials(b"-WRONGPASS invalid username-password pair\r\n"));
        assert!(!failures.refuse_credentials(b"-NOAUTH Authentication required.\r\n"), "said once");
        assert!(failures.credentials_refused());
        assert_eq!(failures.obstacle().map(Obstacle::brief), Some("WRONGPASS"), "the first refusal says most");
        failures.answered();
        failures.connect_failed(ConnectFailure::TimedOut);
        failures.refused();
        assert_eq!(failures.obstacle(), Some(&Obstacle::Refused), "a refused connect is always said");
        assert_eq!(failures.went_down(DownCause::Busy), "busy: alive but not answering for busy_down_after");
        assert_eq!(failures.obstacle(), Some(&Obstacle::Refused), "kept while credentials are refused");
        assert!(failures.accept_credentials());
        assert!(!failures.accept_credentials(), "accepted once");
        assert!(!failures.credentials_refused());
        failures.refuse_credentials(b"-NOAUTH Authentication required.\r\n");
        assert!(failures.accept_credentials());
        assert_eq!(failures.obstacle(), None, "the refusal was the obstacle");
    }

    #[test]
    fn busy_is_down_after_busy_down_after_and_a_kill_silent_only_once_a_knock_confirms() {
        let start = Instant::now();
        let (down_after, busy_down_after) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut evidence = Evidence::default();
        assert_eq!(evidence.down_at(start, down_after, busy_down_after), start + down_after);
        assert_eq!(evidence.down_cause(), None, "silent, and nothing says whether it is alive: knock first");
        evidence.no_proof_of_life();
        assert_eq!(evidence.down_cause(), Some(DownCause::Silent(None)));

        let mut evidence = Evidence::default();
        assert_eq!(evidence.busy_reply(b"+PONG\r\n", start), None);
        assert_eq!(evidence.busy_reply(b"-LOADING Redis is loading\r\n", start), Some("it answers -LOADING"));
        assert_eq!(evidence.kill_due(), None, "a loading server is not killed");
        let busy = b"-BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.\r\n";
        assert_eq!(evidence.busy_reply(busy, start), Some("it answers -BUSY"));
        assert_eq!(evidence.down_at(start, down_after, busy_down_after), start + busy_down_after);
        assert_eq!(evidence.down_cause(), Some(DownCause::Busy));
        assert_eq!(evidence.kill_due(), Some("FUNCTION KILL"));
        let sent = start + busy_down_after;
        evidence.kill_sent(sent);
        assert_eq!(evidence.kill_due(), None, "once per busy spell");
        assert_eq!(evidence.down_at(start, down_after, busy_down_after), sent + down_after);
        assert_eq!(evidence.down_cause(), Some(DownCause::BusyAfterKill));

        let mut evidence = Evidence::default();
        evidence.alive(start);
        assert_eq!(evidence.down_cause(), Some(DownCause::Busy), "a knock was accepted");
        evidence.no_proof_of_life();
        assert_eq!(evidence.down_cause(), Some(DownCause::Silent(None)), "then one timed out");
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
