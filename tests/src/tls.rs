//! TLS for the end-to-end tests: a CA, a server certificate and a client certificate made with the `openssl`
//! command in a scratch directory, and `redis-cli --tls` to reach servers that listen on TLS only.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Certificates and keys made for one test (PEM files in `dir`), removed on drop.
#[derive(Debug)]
pub struct Certs {
    /// The directory holding the files.
    pub dir: PathBuf,
}

/// The key options of every certificate made here but the self-signed one: a P-256 key, unencrypted.
const P256_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

impl Certs {
    /// Makes a CA named `name`, a certificate for 127.0.0.1 and localhost (`server.crt`, usable by servers and
    /// clients) and a client certificate (`client.crt`), all signed by that CA, with P-256 keys.
    pub fn generate(name: &str) -> Certs {
        let certs = Certs { dir: crate::scratch_dir(&format!("certs-{name}")) };
        let ca_subject = format!("/CN=redis-proxy test CA {name}");
        let mut ca = vec!["req", "-x509", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt", "-subj", &ca_subject];
        ca.extend_from_slice(&P256_KEY);
        ca.extend_from_slice(&["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend_from_slice(&["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        certs.openssl(&ca);
        for (leaf, usage) in [("server", "serverAuth,clientAuth"), ("client", "clientAuth")] {
            certs.request(leaf, usage, "DNS:localhost,IP:127.0.0.1");
            certs.sign(leaf);
        }
        certs
    }

    /// Runs `openssl args` in the directory; panics with its error output if it fails.
    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install it with `apt-get install openssl`"));
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Makes `{name}.key`, the signing request `{name}.csr` (subject `/CN={name}`), and `{name}.ext`: the
    /// extensions of a leaf certificate for `usage` (extendedKeyUsage) with the subjectAltName `san`.
    fn request(&self, name: &str, usage: &str, san: &str) {
        let (key, csr, subject) = (format!("{name}.key"), format!("{name}.csr"), format!("/CN={name}"));
        let mut req = vec!["req", "-keyout", &key, "-out", &csr, "-subj", &subject];
        req.extend_from_slice(&P256_KEY);
        self.openssl(&req);
        let extensions = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n\
             subjectAltName={san}\n"
        );
        std::fs::write(self.dir.join(format!("{name}.ext")), extensions).expect("write extensions");
    }

    /// Makes `{name}.crt` from the request [`Certs::request`] made: signed by the CA, valid for two days.
    fn sign(&self, name: &str) {
        let (csr, crt, ext) = (format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        let ca = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"];
        let mut x509 = vec!["x509", "-req", "-in", &csr, "-out", &crt, "-extfile", &ext];
        x509.extend_from_slice(&ca);
        self.openssl(&x509);
    }

    /// Makes `{name}.crt` and `{name}.key`: a self-signed certificate made the usual quick way (`openssl req -x509
    /// -newkey rsa:2048 -nodes -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1`), which
    /// OpenSSL makes a CA certificate (`CA:TRUE`).
    pub fn self_signed(&self, name: &str) {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        let mut req = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt];
        req.extend_from_slice(&["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]);
        self.openssl(&req);
    }

    /// Makes `{name}.crt` and `{name}.key`: a server certificate this CA signed, with the subjectAltName `san`
    /// (e.g. `DNS:other.example`) and, if given, the validity period `dates` (`YYYYMMDDHHMMSSZ` start and end,
    /// e.g. one in the past: `openssl ca -startdate -enddate`, which OpenSSL 3.0 has, unlike `x509 -not_after`).
    pub fn signed(&self, name: &str, san: &str, dates: Option<(&str, &str)>) {
        self.request(name, "serverAuth,clientAuth", san);
        let Some((start, end)) = dates else { return self.sign(name) };
        let (csr, crt, ext) = (format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        // `openssl ca` keeps a small database of what it signed.
        let db = self.dir.join(format!("{name}-db"));
        std::fs::create_dir_all(&db).expect("ca database dir");
        std::fs::write(db.join("index.txt"), "").expect("ca index");
        std::fs::write(db.join("serial"), "1000\n").expect("ca serial");
        let config = format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {db}/index.txt\nserial = {db}/serial\n\
             new_certs_dir = {db}\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\n\
             commonName = supplied\n",
            db = db.display()
        );
        let config_file = format!("{name}-ca.cnf");
        std::fs::write(self.dir.join(&config_file), config).expect("write ca config");
        let mut ca = vec!["ca", "-batch", "-config", &config_file, "-cert", "ca.crt", "-keyfile", "ca.key"];
        ca.extend_from_slice(&["-in", &csr, "-out", &crt, "-notext", "-extfile", &ext]);
        ca.extend_from_slice(&["-startdate", start, "-enddate", end]);
        self.openssl(&ca);
    }

    /// The path of `file` in the directory, as a string for configs and command lines.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// The `redis-server` arguments that make it listen with TLS only on `port`, its replication over TLS too,
    /// without asking clients for certificates.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        self.server_args_with(port, "server", "ca.crt")
    }

    /// Like [`Certs::server_args`], with the certificate and key `{name}.crt` and `{name}.key` and the CA file
    /// `ca` (for its replication).
    pub fn server_args_with(&self, port: u16, name: &str, ca: &str) -> Vec<String> {
        let mut args: Vec<String> = ["--port", "0", "--tls-port", &port.to_string()].map(String::from).to_vec();
        for (flag, file) in [("--tls-cert-file", format!("{name}.crt")), ("--tls-key-file", format!("{name}.key"))] {
            args.extend([flag.to_string(), self.path(&file)]);
        }
        args.extend(["--tls-ca-cert-file".to_string(), self.path(ca)]);
        args.extend(["--tls-auth-clients", "no", "--tls-replication", "yes"].map(String::from));
        args
    }

    /// Runs `redis-cli --tls` (trusting this CA) against 127.0.0.1:`port` with `extra` options and `args`;
    /// returns whether it exited 0 and what it printed on stdout and stderr.
    pub fn cli(&self, port: u16, extra: &[&str], args: &[&str]) -> (bool, String) {
        let output = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.path("ca.crt"), "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (apt-get install redis-tools)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text.trim().to_string())
    }

    /// What `redis-cli --tls` prints for `args` against the TLS server or proxy on `port` (trimmed); panics if it
    /// fails.
    pub fn call(&self, port: u16, args: &[&str]) -> String {
        let (ok, text) = self.cli(port, &[], args);
        assert!(ok, "redis-cli --tls -p {port} {args:?} failed: {text}");
        text
    }

    /// A field of `INFO replication` of the TLS server on `port`, if it answers.
    pub fn replication_field(&self, port: u16, name: &str) -> Option<String> {
        let (ok, text) = self.cli(port, &[], &["INFO", "replication"]);
        if !ok {
            return None;
        }
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_string())
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `redis-cli --tls` gets `PONG` (or `NOAUTH`) from 127.0.0.1:`port`: whether the server is up, whatever
/// its certificate (a test may give it an expired one on purpose), hence `--insecure`.
pub(crate) fn tls_ping(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["--tls", "--insecure"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            // A server that wants a password answers too, which is all this asks.
            let answer = String::from_utf8_lossy(&o.stdout);
            (o.status.success() && answer.trim() == "PONG") || answer.contains("NOAUTH")
        })
}
