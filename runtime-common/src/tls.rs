//! TLS on both sides, with rustls, for every runtime: the configuration's files loaded into rustls configs
//! ([`TlsSetup`]), and one connection's TLS state driven without owning its socket ([`TlsConn`]: the runtime
//! passes the socket in for each call, as a non-blocking `Read + Write`).
//!
//! The engine never sees TLS: it gets and gives plaintext, and a backend connection counts as connected only once
//! its handshake is done (a failed handshake is reported as a failed connect, not as a refusal, with its reason in
//! plain words: see [`crate::server_cert`]). A server certificate listed in `server_tls.ca_file` itself is
//! accepted as pinned, as OpenSSL clients accept it.

use crate::closing::{CloseStep, Closing};
use crate::server_cert::{explain, PinnedOrWebPki, TlsFailure};
use bytes::BytesMut;
use redis_proxy_engine::{ClientTls, Config, ServerAddress, ServerTls, SYSTEM_CA_FILE};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls::{ServerConnection, SignatureScheme};
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Instant;

/// Most ciphertext records read from the socket per [`TlsConn::read`] call before plaintext must have come out:
/// a bound on the work one call does while a peer sends only handshake or empty records.
const RECORDS_PER_READ: usize = 64;

/// Which listener a client came from: how it speaks (`Tls`) and what it may do (`Admin`: send `PROXY` commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The plain listener (`listen_port`).
    Plain,
    /// The TLS listener (`tls.port`).
    Tls,
    /// The admin listener (`admin_listen`).
    Admin,
}

/// The loaded TLS configuration: what the client listener presents and what backend connections verify.
#[derive(Clone, Default)]
pub struct TlsSetup {
    /// For clients of the TLS listener (`tls`), if configured.
    pub acceptor: Option<Arc<ServerConfig>>,
    /// For connections to the servers (`server_tls`), if configured.
    pub connector: Option<Connector>,
}

/// What opens TLS connections to the servers: the rustls config and the name to verify, if fixed.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    /// `server_tls.server_name`; None: each server's own host.
    server_name: Option<ServerName<'static>>,
}

impl TlsSetup {
    /// Loads every file `config` names for TLS; the error names the field whose file is missing or unusable.
    pub fn load(config: &Config) -> Result<TlsSetup, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let acceptor = config.tls.as_ref().map(|tls| acceptor(tls, &provider)).transpose()?;
        let connector = config.server_tls.as_ref().map(|tls| connector(tls, &provider)).transpose()?;
        Ok(TlsSetup { acceptor, connector })
    }

    /// A TLS connection for a client accepted from `entry` (None for the plain and admin listeners).
    pub fn accept(&self, entry: Entry, peer: &str) -> Option<io::Result<TlsConn>> {
        let config = self.acceptor.as_ref().filter(|_| entry == Entry::Tls)?;
        Some(
            ServerConnection::new(config.clone())
                .map(|conn| TlsConn::new(Connection::Server(conn), format!("client {peer}")))
                .map_err(|error| tls_error(&format!("client {peer}"), &error)),
        )
    }

    /// A TLS connection to `address` (None when `server_tls` is not configured: plain TCP).
    pub fn connect(&self, address: &ServerAddress) -> Option<io::Result<TlsConn>> {
        let connector = self.connector.as_ref()?;
        let label = format!("server {address}");
        let name = match &connector.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(address.host.clone())
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS with {label}: {error}"))),
        };
        Some(name.and_then(|name| {
            ClientConnection::new(connector.config.clone(), name)
                .map(|conn| TlsConn::new(Connection::Client(conn), label.clone()))
                .map_err(|error| tls_error(&label, &error))
        }))
    }
}

fn acceptor(tls: &ClientTls, provider: &Arc<CryptoProvider>) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates(&tls.cert_file, "tls.cert_file")?;
    let key = private_key(&tls.key_file, "tls.key_file")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("`tls`: {e}"))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let roots = Arc::new(roots(file, "tls.client_ca_file")?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("`tls.client_ca_file`: {file}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("`tls.key_file`: {} does not fit `tls.cert_file` {}: {e}", tls.key_file, tls.cert_file))?;
    Ok(Arc::new(config))
}

fn connector(tls: &ServerTls, provider: &Arc<CryptoProvider>) -> Result<Connector, String> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("`server_tls`: {e}"))?;
    let builder = if tls.insecure_skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider.clone())))
    } else {
        let file = tls.ca_file.as_deref().unwrap_or(SYSTEM_CA_FILE);
        let roots = Arc::new(roots(file, "server_tls.ca_file")?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("`server_tls.ca_file`: {file}: {e}"))?;
        let pinned = certificates(file, "server_tls.ca_file")?;
        builder.dangerous().with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { pinned, webpki }))
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = certificates(cert_file, "server_tls.cert_file")?;
            let key = private_key(key_file, "server_tls.key_file")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("`server_tls.key_file`: {key_file} does not fit `server_tls.cert_file` {cert_file}: {e}")
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    let server_name = match &tls.server_name {
        None => None,
        Some(name) => {
            Some(ServerName::try_from(name.clone()).map_err(|e| format!("`server_tls.server_name`: {name}: {e}"))?)
        }
    };
    Ok(Connector { config: Arc::new(config), server_name })
}

/// The certificates in the PEM file `path` (at least one).
fn certificates(path: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`{field}`: {path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("`{field}`: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file `path`.
fn private_key(path: &str, field: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("`{field}`: {path}: no usable PEM private key: {e}"))
}

/// A root store of every certificate in the PEM file `path`.
fn roots(path: &str, field: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, field)? {
        store.add(cert).map_err(|e| format!("`{field}`: {path}: {e}"))?;
    }
    Ok(store)
}

/// `server_tls.insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are still
/// checked (so the peer at least holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS error as an `io::Error` (kind `InvalidData`) whose text says which peer and why. For a server, the
/// error inside is a [`TlsFailure`]: the reason in plain words, and its kind for the engine.
fn tls_error(label: &str, error: &rustls::Error) -> io::Error {
    if label.starts_with("server ") {
        let (failure, plain) = explain(error);
        let text = format!("TLS with {label} failed: {plain}");
        return io::Error::new(io::ErrorKind::InvalidData, TlsFailure { failure, text });
    }
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS with {label} failed: {error}"))
}

/// One connection's TLS state. The socket is passed to each call; its buffers are rustls' own (64 KiB of
/// outgoing records at most, its default limit: past it [`TlsConn::write`] takes nothing and says `WouldBlock`).
pub struct TlsConn {
    conn: Connection,
    /// Who is at the other end (`client 127.0.0.1:50000`, `server 127.0.0.1:6379`), for error messages.
    label: String,
    /// `close_notify` has been queued.
    notified: bool,
}

impl TlsConn {
    fn new(conn: Connection, label: String) -> TlsConn {
        TlsConn { conn, label, notified: false }
    }

    /// Who is at the other end, for the log.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether records are waiting for the socket to take them.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Reads what the socket holds, decrypts it and appends the plaintext to `buf`: `Ok(n)` with n > 0 bytes,
    /// `Ok(0)` when the peer closed, `WouldBlock` when nothing more is there. Records the peer needs in answer
    /// (handshake) are written as far as the socket takes them. A TLS failure is an `InvalidData` error that says
    /// which peer and why (the alert for the peer is written first, if the socket takes it).
    pub fn read(&mut self, io: &mut (impl Read + Write), buf: &mut BytesMut) -> io::Result<usize> {
        for _ in 0..RECORDS_PER_READ {
            let eof = match self.conn.read_tls(io) {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    if error.kind() == io::ErrorKind::WouldBlock {
                        self.flush(io)?;
                    }
                    return Err(error);
                }
            };
            if let Err(error) = self.conn.process_new_packets() {
                let _ = self.flush(io);
                return Err(tls_error(&self.label, &error));
            }
            self.flush(io)?;
            let taken = self.take_plaintext(buf)?;
            if taken > 0 {
                return Ok(taken);
            }
            if eof || self.peer_closed() {
                return Ok(0);
            }
        }
        // Only records without data so far: report nothing yet, and be called again (the socket may hold more).
        Err(io::ErrorKind::Interrupted.into())
    }

    /// Whether the peer's side is over (a `close_notify`, or an end of stream without one).
    fn peer_closed(&mut self) -> bool {
        match self.conn.reader().fill_buf() {
            Ok(chunk) => chunk.is_empty(),
            Err(error) => error.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Moves the decrypted plaintext into `buf`; returns how much.
    fn take_plaintext(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            let mut reader = self.conn.reader();
            let chunk = match reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
                // A TCP end without `close_notify`: the end of the stream, as for a plain socket.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(taken),
                Err(error) => return Err(error),
            };
            if chunk.is_empty() {
                return Ok(taken);
            }
            let len = chunk.len();
            buf.extend_from_slice(chunk);
            reader.consume(len);
            taken += len;
        }
    }

    /// Encrypts as much of `slices` as rustls' buffer takes and writes the records; returns the plaintext bytes
    /// taken, or `WouldBlock` when none (the socket has not taken the earlier records yet).
    pub fn write(&mut self, io: &mut impl Write, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.flush(io)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = self.conn.writer().write_vectored(slices)?;
        self.flush(io)?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes pending records until the socket would block; returns whether none is left.
    pub fn flush(&mut self, io: &mut impl Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(io) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    /// Advances the handshake of a connection the proxy opened with what the socket holds; returns whether it
    /// is done (then the connection carries data). Data that arrives with the last handshake records stays in
    /// rustls for the next [`TlsConn::read`]. A failure says which server and why.
    pub fn handshake(&mut self, io: &mut (impl Read + Write)) -> io::Result<bool> {
        for _ in 0..RECORDS_PER_READ {
            self.flush(io)?;
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            match self.conn.read_tls(io) {
                Ok(0) => {
                    let text = format!(
                        "TLS with {} failed: it closed the connection during the handshake (does it listen with TLS \
                         on this port?)",
                        self.label
                    );
                    let failure = redis_proxy_engine::ConnectFailure::TlsHandshake;
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, TlsFailure { failure, text }));
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
            if let Err(error) = self.conn.process_new_packets() {
                let _ = self.flush(io);
                return Err(tls_error(&self.label, &error));
            }
        }
        self.flush(io)?;
        Ok(!self.conn.is_handshaking())
    }

    /// Queues `close_notify` (once) and writes pending records; returns whether none is left: then the runtime
    /// may send the FIN.
    pub fn finish(&mut self, io: &mut impl Write) -> io::Result<bool> {
        if !std::mem::replace(&mut self.notified, true) {
            self.conn.send_close_notify();
        }
        self.flush(io)
    }
}

/// Flushes a closing TLS connection: the queued plaintext through `tls`, then `close_notify` and the last
/// records (see [`Closing::flush`] and [`Closing::finish_layer`]).
pub fn flush_closing(closing: &mut Closing, now: Instant, tls: &mut TlsConn, io: &mut impl Write) -> CloseStep {
    match closing.flush(now, |slices| tls.write(io, slices)) {
        CloseStep::Finish => closing.finish_layer(now, tls.finish(io)),
        step => step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::path::PathBuf;
    use std::process::Command;

    /// One direction of an in-memory socket pair: what was written and not yet read, and how much it takes.
    #[derive(Default)]
    struct Pipe {
        bytes: VecDeque<u8>,
    }

    /// One end of an in-memory non-blocking socket: reads from `inbound`, writes to `outbound` (at most `room`
    /// bytes per call: a slow socket).
    struct End<'a> {
        inbound: &'a mut Pipe,
        outbound: &'a mut Pipe,
        room: usize,
    }

    impl Read for End<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inbound.bytes.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.inbound.bytes.len());
            for (slot, byte) in buf.iter_mut().zip(self.inbound.bytes.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    impl Write for End<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.outbound.bytes.extend(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A CA and a certificate for 127.0.0.1 made with `openssl`, and a config that uses them on both sides.
    fn setup(name: &str) -> (PathBuf, TlsSetup) {
        let dir = std::env::temp_dir().join(format!("redis-proxy-tls-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let openssl = |args: &str| {
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("openssl {args}"))
                .current_dir(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run openssl (apt-get install openssl)");
            assert!(status.success(), "openssl {args}");
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {key} -days 1 -subj /CN=ca -keyout ca.key -out ca.crt \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ));
        openssl(&format!("req {key} -subj /CN=s -keyout s.key -out s.csr"));
        std::fs::write(dir.join("s.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").expect("ext");
        openssl("x509 -req -in s.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -out s.crt -extfile s.ext");
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let config = Config::from_json(&format!(
            r#"{{"servers": [{{"port": 1}}], "tls": {{"port": 2, "cert_file": "{}", "key_file": "{}"}},
                "server_tls": {{"ca_file": "{}"}}}}"#,
            path("s.crt"),
            path("s.key"),
            path("ca.crt")
        ))
        .expect("valid config");
        let setup = TlsSetup::load(&config).expect("the files load");
        (dir, setup)
    }

    fn server_address() -> ServerAddress {
        ServerAddress { host: "127.0.0.1".to_string(), port: 1 }
    }

    #[test]
    fn carries_data_through_a_slow_socket_and_closes_with_close_notify() {
        let (dir, setup) = setup("carry");
        let mut client = setup.connect(&server_address()).expect("server_tls").expect("a connection");
        let mut server = setup.accept(Entry::Tls, "127.0.0.1:5").expect("tls").expect("a connection");
        let (mut to_server, mut to_client) = (Pipe::default(), Pipe::default());
        let mut done = false;
        for _ in 0..100 {
            let mut c = End { inbound: &mut to_client, outbound: &mut to_server, room: 100 };
            done = client.handshake(&mut c).expect("client handshake");
            let mut s = End { inbound: &mut to_server, outbound: &mut to_client, room: 100 };
            let _ = server.read(&mut s, &mut BytesMut::new());
            if done {
                break;
            }
        }
        assert!(done && !client.is_handshaking());
        // 1 MiB through a socket that takes 1000 bytes per call: the writer says WouldBlock, never loses bytes.
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut sent, mut received) = (0, BytesMut::new());
        for _ in 0..100_000 {
            if received.len() == data.len() {
                break;
            }
            let mut c = End { inbound: &mut to_client, outbound: &mut to_server, room: 1000 };
            match client.write(&mut c, &[IoSlice::new(&data[sent..])]) {
                Ok(n) => sent += n,
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::WouldBlock),
            }
            let _ = client.flush(&mut c);
            let mut s = End { inbound: &mut to_server, outbound: &mut to_client, room: 1000 };
            match server.read(&mut s, &mut received) {
                Ok(n) => assert!(n > 0, "no end of stream yet"),
                Err(error) => assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)),
            }
        }
        assert!(received[..] == data[..], "every byte arrives, in order");
        let mut c = End { inbound: &mut to_client, outbound: &mut to_server, room: usize::MAX };
        assert!(client.finish(&mut c).expect("close_notify written"));
        let mut s = End { inbound: &mut to_server, outbound: &mut to_client, room: usize::MAX };
        assert_eq!(server.read(&mut s, &mut received).expect("a clean end"), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Drives a handshake between `client` (the proxy towards a server) and `server` over in-memory sockets; the
    /// client's outcome.
    fn handshake(client: &TlsSetup, server: &TlsSetup) -> io::Result<()> {
        let mut client = client.connect(&server_address()).expect("server_tls").expect("a connection");
        let mut server = server.accept(Entry::Tls, "127.0.0.1:5").expect("tls").expect("a connection");
        let (mut to_server, mut to_client) = (Pipe::default(), Pipe::default());
        for _ in 0..100 {
            let mut c = End { inbound: &mut to_client, outbound: &mut to_server, room: usize::MAX };
            if client.handshake(&mut c)? {
                return Ok(());
            }
            let mut s = End { inbound: &mut to_server, outbound: &mut to_client, room: usize::MAX };
            let _ = server.read(&mut s, &mut BytesMut::new());
        }
        Err(io::ErrorKind::TimedOut.into())
    }

    #[test]
    fn a_pinned_self_signed_server_certificate_is_accepted_and_an_unlisted_one_refused_in_plain_words() {
        let (dir, ca_signed) = setup("pinned");
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "pin.key", "-out", "pin.crt"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success());
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let config = |ca: &str| {
            Config::from_json(&format!(
                r#"{{"servers": [{{"port": 1}}], "tls": {{"port": 2, "cert_file": "{}", "key_file": "{}"}},
                    "server_tls": {{"ca_file": "{}"}}}}"#,
                path("pin.crt"),
                path("pin.key"),
                path(ca)
            ))
            .expect("valid config")
        };
        let pinned = TlsSetup::load(&config("pin.crt")).expect("the files load");
        handshake(&pinned, &pinned).expect("the pinned certificate is accepted");
        // Trusting only the CA: refused, with the reason in plain words and its kind for the engine.
        let error = handshake(&ca_signed, &pinned).expect_err("not pinned: refused");
        assert!(
            error.to_string().starts_with("TLS with server 127.0.0.1:1 failed: it presents a CA certificate"),
            "{error}"
        );
        assert_eq!(
            crate::connect_failure(&error),
            redis_proxy_engine::ConnectFailure::Certificate(
                redis_proxy_engine::CertificateProblem::CaAsServerCertificate
            )
        );
        // The CA-signed certificate still verifies through the same verifier.
        handshake(&ca_signed, &ca_signed).expect("a CA-signed certificate is accepted");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn garbage_is_an_error_that_names_the_peer_never_a_panic() {
        let (dir, setup) = setup("garbage");
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..200 {
            let mut server = setup.accept(Entry::Tls, "127.0.0.1:7").expect("tls").expect("a connection");
            let mut client = setup.connect(&server_address()).expect("server_tls").expect("a connection");
            let mut inbound = Pipe::default();
            // Random bytes, some of them behind a valid-looking record header.
            let len = 1 + (seed % 3000) as usize;
            for i in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let byte = if round % 2 == 0 && i < 3 { [0x16, 0x03, 0x01][i] } else { seed as u8 };
                inbound.bytes.push_back(byte);
            }
            let copy = inbound.bytes.clone();
            let mut sink = Pipe::default();
            let mut end = End { inbound: &mut inbound, outbound: &mut sink, room: usize::MAX };
            if let Err(error) = server.read(&mut end, &mut BytesMut::new()) {
                if error.kind() == io::ErrorKind::InvalidData {
                    assert!(error.to_string().contains("TLS with client 127.0.0.1:7 failed"), "{error}");
                }
            }
            let mut inbound = Pipe { bytes: copy };
            let mut end = End { inbound: &mut inbound, outbound: &mut sink, room: usize::MAX };
            if let Err(error) = client.handshake(&mut end) {
                assert!(error.to_string().contains("TLS with server 127.0.0.1:1 failed"), "{error}");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
