//! How the proxy judges a server's TLS certificate, and what it says when it refuses one.
//!
//! - [`PinnedOrWebPki`]: a certificate listed in `server_tls.ca_file` itself (byte for byte) is accepted as
//!   pinned, as OpenSSL clients (`redis-cli --tls --cacert`, redis-py) accept a self-signed server certificate
//!   given as their CA file; only its validity period is checked. Every other chain goes to rustls'
//!   [`WebPkiServerVerifier`] unchanged.
//! - [`explain`]: a rustls error turned into what an operator can act on (expired, not valid for this name and
//!   the names it has, an unknown CA, a CA certificate used as the server's own, with the fix), and the
//!   [`ConnectFailure`] kind the engine keeps for the error a held request gets.

use crate::log::timestamp;
use redis_proxy_engine::{CertificateProblem, ConnectFailure};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A server certificate verifier: pinned certificates (those of `server_tls.ca_file`, byte-equal) are accepted
/// within their validity period, everything else is verified by WebPKI against the same file's CAs.
#[derive(Debug)]
pub(crate) struct PinnedOrWebPki {
    /// Every certificate of `ca_file`, as DER.
    pub(crate) pinned: Vec<CertificateDer<'static>>,
    /// rustls' own verifier for chains to the CAs of `ca_file`.
    pub(crate) webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|pinned| pinned.as_ref() == end_entity.as_ref()) {
            // The operator named this very certificate: trusted as it is (no chain, no name, as OpenSSL clients
            // do), but not outside its validity period. The handshake's signature, checked below by the same
            // WebPKI code as for any chain, proves the server holds its key.
            within_validity(end_entity, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether `now` lies within the validity period of `cert`: the same errors WebPKI gives for a chain (with the
/// dates), so that [`explain`] words both alike. The dates are read with `x509-parser`, not by hand.
fn within_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let unix = |seconds: i64| UnixTime::since_unix_epoch(Duration::from_secs(seconds.max(0) as u64));
    let time = now.as_secs() as i64;
    if time < validity.not_before.timestamp() {
        let not_before = unix(validity.not_before.timestamp());
        return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { time: now, not_before }));
    }
    if time > validity.not_after.timestamp() {
        let not_after = unix(validity.not_after.timestamp());
        return Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { time: now, not_after }));
    }
    Ok(())
}

/// A failed TLS handshake with a server, in plain words, with its kind: the error inside the `io::Error` a
/// [`crate::TlsConn`] to a server returns, which [`crate::connect_failed`] hands to the engine.
#[derive(Debug)]
pub struct TlsFailure {
    /// The kind, for the engine.
    pub failure: ConnectFailure,
    /// The whole sentence: `TLS with server 127.0.0.1:6379 failed: ...`.
    pub text: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for TlsFailure {}

/// `2020-01-02 00:00:00 UTC`.
fn date(time: UnixTime) -> String {
    let stamp = timestamp(UNIX_EPOCH + Duration::from_secs(time.as_secs()));
    // `2020-01-02T00:00:00.000Z` -> `2020-01-02 00:00:00 UTC`
    format!("{} {} UTC", &stamp[..10], stamp.get(11..19).unwrap_or(""))
}

/// What went wrong in a handshake with a server, in words an operator can act on, and its kind.
pub fn explain(error: &rustls::Error) -> (ConnectFailure, String) {
    use CertificateProblem as P;
    let certificate = |problem: P, text: String| (ConnectFailure::Certificate(problem), text);
    match error {
        rustls::Error::InvalidCertificate(problem) => match problem {
            // No `time` in the words: they are logged once per distinct reason, and the clock moves.
            CertificateError::ExpiredContext { not_after, .. } => certificate(
                P::Expired,
                format!("its certificate expired on {}: give the server a renewed certificate", date(*not_after)),
            ),
            CertificateError::Expired => {
                certificate(P::Expired, "its certificate has expired: give the server a renewed certificate".into())
            }
            CertificateError::NotValidYetContext { not_before, .. } => certificate(
                P::NotYetValid,
                format!(
                    "its certificate is not valid before {}: check the clocks of the server's host, the proxy's host \
                     and the machine that made the certificate",
                    date(*not_before)
                ),
            ),
            CertificateError::NotValidYet => certificate(
                P::NotYetValid,
                "its certificate is not valid yet: check the clocks of the server's host and the proxy's host".into(),
            ),
            CertificateError::NotValidForNameContext { expected, presented } => {
                let expected = name(expected);
                let names = if presented.is_empty() {
                    "none (no subjectAltName)".to_string()
                } else {
                    presented.iter().map(|p| alt_name(p)).collect::<Vec<_>>().join(", ")
                };
                certificate(
                    P::WrongName,
                    format!(
                        "its certificate is not valid for the name {expected}: it names {names}. Connect to it by one \
                         of those names, set server_tls.server_name to one of them, or give the server a \
                         certificate whose subjectAltName includes {expected}"
                    ),
                )
            }
            CertificateError::NotValidForName => certificate(
                P::WrongName,
                "its certificate is not valid for the name the proxy connects to: set server_tls.server_name to a \
                 name it has, or give the server a certificate whose subjectAltName includes that name"
                    .into(),
            ),
            CertificateError::UnknownIssuer => certificate(
                P::UnknownIssuer,
                "its certificate is signed by a CA that server_tls.ca_file does not hold: put the CA that signed it in \
                 ca_file (for a self-signed certificate, the certificate itself, which pins it)"
                    .into(),
            ),
            CertificateError::Other(other) if is_ca_used_as_end_entity(other) => certificate(
                P::CaAsServerCertificate,
                "it presents a CA certificate (basicConstraints CA:TRUE) as its own, and that certificate is not in \
                 server_tls.ca_file: put this exact certificate in ca_file to pin it, or give the server a \
                 certificate with CA:FALSE signed by a CA in ca_file"
                    .into(),
            ),
            CertificateError::BadSignature => certificate(
                P::Other,
                "its certificate's signature does not verify with the key of the CA that claims to have signed it"
                    .into(),
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => certificate(
                P::Other,
                "its certificate is not meant for a TLS server (its extendedKeyUsage lacks serverAuth)".into(),
            ),
            other => certificate(P::Other, format!("its certificate is refused: {other}")),
        },
        rustls::Error::AlertReceived(alert) => (ConnectFailure::TlsRefusedByServer, refusal(*alert)),
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => (
            ConnectFailure::TlsHandshake,
            format!(
                "it does not answer in TLS ({error}): is this its TLS port (tls-port), or does it listen in plain \
                 TCP here (then remove server_tls)?"
            ),
        ),
        other => (ConnectFailure::TlsHandshake, other.to_string()),
    }
}

/// What a server's alert during the handshake means for the proxy's settings.
fn refusal(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "it requires a client certificate (tls-auth-clients yes): set \
                                                  server_tls.cert_file and server_tls.key_file"
            .to_string(),
        AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::CertificateUnknown => {
            "it refuses the proxy's client certificate (server_tls.cert_file): it must be signed by a CA in the \
             server's tls-ca-cert-file"
                .to_string()
        }
        AlertDescription::CertificateExpired => {
            "it refuses the proxy's client certificate (server_tls.cert_file) as expired".to_string()
        }
        AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => format!(
            "it ended the handshake ({alert:?}): no TLS version or cipher in common (check its tls-protocols and \
             tls-ciphersuites), or it wants a client certificate (server_tls.cert_file)"
        ),
        other => format!("it ended the handshake with the alert {other:?}"),
    }
}

/// A subjectAltName as WebPKI writes it (`DnsName("redis.example")`, `IpAddress(127.0.0.1)`) as OpenSSL does
/// (`DNS:redis.example`, `IP:127.0.0.1`).
fn alt_name(presented: &str) -> String {
    if let Some(dns) = presented.strip_prefix("DnsName(\"").and_then(|rest| rest.strip_suffix("\")")) {
        return format!("DNS:{dns}");
    }
    if let Some(ip) = presented.strip_prefix("IpAddress(").and_then(|rest| rest.strip_suffix(')')) {
        return format!("IP:{ip}");
    }
    presented.to_string()
}

/// `127.0.0.1` or `redis.example`.
fn name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Whether WebPKI refused the certificate because it is a CA certificate presented as the server's own.
fn is_ca_used_as_end_entity(other: &rustls::OtherError) -> bool {
    // rustls wraps WebPKI's error as it is; the type is the one rustls itself depends on.
    other.0.downcast_ref::<webpki::Error>().is_some_and(|e| matches!(e, webpki::Error::CaUsedAsEndEntity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::RootCertStore;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// Runs `openssl args` in `dir`.
    fn openssl(dir: &Path, args: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl {args}"))
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("run openssl (apt-get install openssl)");
        assert!(status.success(), "openssl {args}");
    }

    /// A scratch directory with `pin.crt`, a self-signed certificate made the usual quick way, and `ca.crt` with
    /// `leaf.crt`, a certificate for 127.0.0.1 and localhost that CA signed.
    fn certificates(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("redis-proxy-server-cert-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        openssl(
            &dir,
            "req -x509 -newkey rsa:2048 -nodes -keyout pin.key -out pin.crt -days 2 -subj /CN=localhost \
             -addext subjectAltName=DNS:localhost,IP:127.0.0.1",
        );
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            &dir,
            &format!(
                "req -x509 {key} -days 2 -subj /CN=ca -keyout ca.key -out ca.crt \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
            ),
        );
        openssl(&dir, &format!("req {key} -subj /CN=leaf -keyout leaf.key -out leaf.csr"));
        std::fs::write(
            dir.join("leaf.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        openssl(
            &dir,
            "x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out leaf.crt -extfile leaf.ext",
        );
        dir
    }

    fn der(dir: &Path, file: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(file)).expect("a PEM certificate")
    }

    /// The verifier the proxy builds for a `ca_file` holding `files`.
    fn verifier(dir: &Path, files: &[&str]) -> PinnedOrWebPki {
        let pinned: Vec<_> = files.iter().map(|f| der(dir, f)).collect();
        let mut roots = RootCertStore::empty();
        for cert in &pinned {
            roots.add(cert.clone()).expect("a usable root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
        PinnedOrWebPki { pinned, webpki }
    }

    fn verify(
        verifier: &PinnedOrWebPki,
        cert: &CertificateDer<'_>,
        name: &str,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("a name");
        verifier.verify_server_cert(cert, &[], &name, &[], now).map(|_| ())
    }

    const YEAR_2100: u64 = 4_102_444_800;

    #[test]
    fn a_pinned_self_signed_certificate_is_accepted_within_its_validity_period_only() {
        let dir = certificates("pinned");
        let pinned = der(&dir, "pin.crt");
        let verifier = verifier(&dir, &["ca.crt", "pin.crt"]);
        // Accepted as OpenSSL clients accept it, whatever name is asked for (the pin names the certificate).
        assert!(verify(&verifier, &pinned, "127.0.0.1", UnixTime::now()).is_ok());
        assert!(verify(&verifier, &pinned, "elsewhere.example", UnixTime::now()).is_ok());
        // Not once it has expired, and not before it begins.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(YEAR_2100));
        let error = verify(&verifier, &pinned, "127.0.0.1", later).expect_err("expired");
        let (failure, words) = explain(&error);
        assert_eq!(failure, ConnectFailure::Certificate(CertificateProblem::Expired));
        assert!(words.starts_with("its certificate expired on ") && !words.contains("2100"), "{words}");
        let error =
            verify(&verifier, &pinned, "127.0.0.1", UnixTime::since_unix_epoch(Duration::ZERO)).expect_err("early");
        assert_eq!(explain(&error).0, ConnectFailure::Certificate(CertificateProblem::NotYetValid));
        // The CA-signed certificate beside it is verified by WebPKI as before.
        assert!(verify(&verifier, &der(&dir, "leaf.crt"), "127.0.0.1", UnixTime::now()).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refusals_are_said_in_words_an_operator_can_act_on() {
        let dir = certificates("refusals");
        let only_ca = verifier(&dir, &["ca.crt"]);
        // The quick self-signed certificate, not listed: a CA certificate used as the server's own, with the fix.
        let error = verify(&only_ca, &der(&dir, "pin.crt"), "127.0.0.1", UnixTime::now()).expect_err("not pinned");
        let (failure, words) = explain(&error);
        assert_eq!(failure, ConnectFailure::Certificate(CertificateProblem::CaAsServerCertificate), "{error:?}");
        assert!(words.contains("put this exact certificate in ca_file to pin it"), "{words}");
        // A name the certificate does not have: the names it has.
        let leaf = der(&dir, "leaf.crt");
        let error = verify(&only_ca, &leaf, "redis.example", UnixTime::now()).expect_err("wrong name");
        let (failure, words) = explain(&error);
        assert_eq!(failure, ConnectFailure::Certificate(CertificateProblem::WrongName));
        assert!(
            words.contains("not valid for the name redis.example: it names DNS:localhost, IP:127.0.0.1"),
            "{words}"
        );
        // Expired, through WebPKI.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(YEAR_2100));
        let (failure, words) = explain(&verify(&only_ca, &leaf, "127.0.0.1", later).expect_err("expired"));
        assert_eq!(failure, ConnectFailure::Certificate(CertificateProblem::Expired));
        assert!(words.contains("give the server a renewed certificate"), "{words}");
        // Signed by a CA the file does not hold.
        let only_pin = verifier(&dir, &["pin.crt"]);
        let (failure, words) =
            explain(&verify(&only_pin, &leaf, "127.0.0.1", UnixTime::now()).expect_err("unknown CA"));
        assert_eq!(failure, ConnectFailure::Certificate(CertificateProblem::UnknownIssuer));
        assert!(words.contains("signed by a CA that server_tls.ca_file does not hold"), "{words}");
        // The client's brief words name no certificate content.
        assert_eq!(failure.brief(), "TLS certificate refused (unknown CA)");
        let _ = std::fs::remove_dir_all(dir);
    }
}
