//! Shared harness for the end-to-end tests: real `redis-server` processes on free loopback ports,
//! proxy processes (either runtime) with a generated config, and a raw RESP connection.
//!
//! Every process started here is stopped by PID when its handle drops; nothing relies on a server on 6379.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod redis_cluster;
pub mod sentinel;
pub mod tls;

/// The proxy runtimes every end-to-end scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// `redis-proxy`, the mio event loop.
    Mio,
    /// `redis-proxy-tokio`, the tokio runtime.
    Tokio,
}

impl Runtime {
    /// Every runtime, for parametrised tests.
    pub const ALL: &'static [Runtime] = &[Runtime::Mio, Runtime::Tokio];

    /// The binary's name in the cargo target directory.
    pub fn binary_name(self) -> &'static str {
        match self {
            Runtime::Mio => "redis-proxy",
            Runtime::Tokio => "redis-proxy-tokio",
        }
    }
}

/// Serialises the timing-sensitive scenarios (failover, routing) of one test binary: on a 2-core machine, several
/// at once could starve a proxy's probes long enough to look like a dead server.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Returns a TCP port on 127.0.0.1 that is free now and that no other test of this process was given.
///
/// Ports come from a per-process sequence below Linux's ephemeral range (32768+), so a server started by one
/// test cannot take the port just chosen for another test's proxy, nor collide with outgoing connections.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 60) as u16 * 200, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = if port >= 32_000 { 20_000 + port % 12_000 } else { port };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory for one process's files, under the system temp dir.
pub fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redis-proxy-tests-{}-{label}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A `redis-server` child process on a free loopback port, killed by PID on drop.
pub struct RedisServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra_args: Vec<String>,
    /// The directory of the certificates when the server listens with TLS only (see [`RedisServer::start_tls`]).
    tls: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a standalone `redis-server` (no persistence) and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a `redis-server` with extra command-line arguments (e.g. `["--replicaof", "127.0.0.1", "7000"]`).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = scratch_dir(&format!("redis-{port}"));
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls: None,
        };
        server.spawn();
        server
    }

    /// Starts a `redis-server` that listens with TLS only (`--port 0 --tls-port`, see [`tls::Certs::server_args`])
    /// with extra arguments (e.g. `--replicaof` another TLS server's port); waits until it answers PING over TLS.
    pub fn start_tls(certs: &tls::Certs, extra_args: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = scratch_dir(&format!("redis-tls-{port}"));
        let mut args = certs.server_args(port);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut server = RedisServer { port, child: None, dir, extra_args: args, tls: Some(certs.dir.clone()) };
        server.spawn();
        server
    }

    /// Like [`RedisServer::start_tls`], presenting `{name}.crt` (see [`tls::Certs::server_args_with`]).
    pub fn start_tls_with(certs: &tls::Certs, name: &str, ca: &str, extra_args: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = scratch_dir(&format!("redis-tls-{port}"));
        let mut args = certs.server_args_with(port, name, ca);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut server = RedisServer { port, child: None, dir, extra_args: args, tls: Some(certs.dir.clone()) };
        server.spawn();
        server
    }

    /// Starts a replica of `master`.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        Self::start_replica_of_with(master, &[])
    }

    /// Starts a replica of `master` with extra command-line arguments (e.g. `["--enable-debug-command", "local"]`).
    pub fn start_replica_of_with(master: &RedisServer, extra_args: &[&str]) -> RedisServer {
        let port = master.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &port];
        args.extend_from_slice(extra_args);
        Self::start_with(&args)
    }

    fn spawn(&mut self) {
        // A TLS server's `--port 0 --tls-port` are among its extra arguments.
        let port_args = if self.tls.is_some() { vec![] } else { vec!["--port".to_string(), self.port.to_string()] };
        let child = Command::new("redis-server")
            .args(port_args)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the end-to-end tests need it. \
                     Install it with `apt-get install redis-server redis-tools`"
                )
            });
        self.child = Some(child);
        let port = self.port;
        let tls = self.tls.clone();
        assert!(
            wait_until(Duration::from_secs(10), || match &tls {
                None => ping(port),
                Some(_) => tls::tls_ping(port),
            }),
            "redis-server on port {port} did not answer PING within 10 s"
        );
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal (e.g. "STOP", "CONT", "KILL") to the server's process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("server is running");
        let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Opens a raw RESP connection straight to this server.
    pub fn connect(&self) -> RespConn {
        RespConn::connect(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A SIGSTOPped server would ignore SIGKILL until continued on some kernels; be sure.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    if conn.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    // A server (or proxy) that wants a password answers, which is all this asks.
    conn.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}

/// The path of a runtime's proxy binary, built once per test process (e.g. to run `--check`).
pub fn proxy_binary(runtime: Runtime) -> PathBuf {
    binaries_dir().join(runtime.binary_name())
}

/// Builds the proxy binaries once per test process, in release mode, and returns the directory holding them.
///
/// Cargo has released its build lock by the time tests run, so this shares the workspace's target directory.
fn binaries_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace)
            .args(["build", "--release", "--bins", "--target-dir"])
            .arg(&target)
            .status()
            .expect("run cargo build for the proxy binaries");
        assert!(status.success(), "building the proxy binaries failed");
        target.join("release")
    })
}

/// The proxy binary of `runtime`, built in release mode (for running it with other arguments, e.g. `--check`).
pub fn binary(runtime: Runtime) -> PathBuf {
    binaries_dir().join(runtime.binary_name())
}

/// The worker threads `REDIS_PROXY_TEST_WORKERS` asks for, where they apply: `servers` and `sentinel` mode, when
/// the test sets no `workers` of its own.
pub fn test_workers(fields: &str) -> Option<usize> {
    let workers: usize = std::env::var("REDIS_PROXY_TEST_WORKERS").ok()?.parse().ok()?;
    let applies = workers > 1 && !fields.contains("\"workers\"");
    applies.then_some(workers)
}

/// A proxy process of one runtime with a config written for it, killed by PID on drop.
pub struct Proxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Child,
    dir: PathBuf,
    stderr_path: PathBuf,
}

impl Proxy {
    /// Starts a proxy in front of `servers` with `listen_port` chosen here and `extra` JSON fields merged into the
    /// config (e.g. `r#""mode": "readsToSlaves""#`); waits until it answers PING.
    pub fn start(runtime: Runtime, servers: &[u16], extra: &str) -> Proxy {
        let servers: Vec<(&str, u16)> = servers.iter().map(|p| ("127.0.0.1", *p)).collect();
        Self::start_at(runtime, &servers, extra)
    }

    /// Like [`Proxy::start`], for servers given as `(host, port)` (e.g. one in a network namespace).
    pub fn start_at(runtime: Runtime, servers: &[(&str, u16)], extra: &str) -> Proxy {
        let servers_json: Vec<String> =
            servers.iter().map(|(h, p)| format!(r#"{{"host": "{h}", "port": {p}}}"#)).collect();
        let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
        Self::start_with_fields(runtime, &format!(r#""servers": [{}]{extra}"#, servers_json.join(", ")))
    }

    /// Starts a proxy whose config is `fields` (JSON object members, e.g. a `"sentinel"` section) with
    /// `listen_port` chosen here; waits until it answers PING.
    ///
    /// With `REDIS_PROXY_TEST_WORKERS=N` in the environment, a proxy in `servers` or `sentinel` mode runs `N`
    /// worker threads (`"workers": N`) unless the test sets `workers` itself: CI runs the end-to-end suites so too.
    pub fn start_with_fields(runtime: Runtime, fields: &str) -> Proxy {
        let port = free_port();
        let dir = scratch_dir(&format!("proxy-{port}"));
        let workers = test_workers(fields).map(|n| format!(r#", "workers": {n}"#)).unwrap_or_default();
        let config = format!(r#"{{{fields}, "listen_port": {port}, "bind_address": "127.0.0.1"{workers}}}"#);
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config).expect("write proxy config");
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create proxy log");
        let child = Command::new(binaries_dir().join(runtime.binary_name()))
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the proxy binary");
        let proxy = Proxy { port, child, dir, stderr_path };
        assert!(
            wait_until(Duration::from_secs(10), || ping(port)),
            "proxy did not answer PING within 10 s; its log:\n{}",
            proxy.log()
        );
        proxy
    }

    /// The config file the proxy was started with (rewrite it, then send SIGHUP, to test a reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// What the proxy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Opens a raw RESP connection to the proxy.
    pub fn connect(&self) -> RespConn {
        RespConn::connect(self.port)
    }

    /// A `redis` crate client for the proxy.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .and_then(|c| c.get_connection())
            .expect("redis client connects to the proxy")
    }

    /// The proxy's process id (e.g. to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (e.g. "TERM", "INT") to the proxy process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// How the proxy process exited, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking raw RESP connection with a 10 s read timeout, for byte-exact checks.
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

/// One RESP reply as read back by [`RespConn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Status(String),
    /// `-...`
    Error(String),
    /// `:...`
    Int(i64),
    /// `$...` (None for `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*...` (None for `*-1`)
    Array(Option<Vec<Reply>>),
}

impl RespConn {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> RespConn {
        Self::try_connect(port, Duration::from_secs(10)).expect("connect")
    }

    /// Connects to 127.0.0.1:`port` with a read timeout, or says why it could not.
    pub fn try_connect(port: u16, read_timeout: Duration) -> std::io::Result<RespConn> {
        Self::try_connect_addr(([127, 0, 0, 1], port).into(), read_timeout)
    }

    /// Connects to `addr` (within 2 s) with a read timeout, or says why it could not.
    pub fn try_connect_addr(addr: std::net::SocketAddr, read_timeout: Duration) -> std::io::Result<RespConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespConn { reader: BufReader::with_capacity(64 * 1024, stream) })
    }

    /// Sends a command and reads its reply, or returns the I/O error.
    pub fn try_call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.reader.get_mut().write_all(&encode_command(args))?;
        self.try_read_reply()
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write to connection");
    }

    /// Sends one command as a RESP multibulk.
    pub fn send(&mut self, args: &[&[u8]]) {
        self.send_raw(&encode_command(args));
    }

    /// Sends a command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.read_reply()
    }

    /// Reads one reply; panics on timeout or a closed connection.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().expect("read a reply")
    }

    /// Reads one reply, or an I/O error (timeout, EOF).
    pub fn try_read_reply(&mut self) -> std::io::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\r\n") {
            return Err(std::io::Error::other(format!("line without CRLF: {line:?}")));
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let bad = |_| std::io::Error::other(format!("bad length line {text:?}"));
        Ok(match line[0] {
            b'+' => Reply::Status(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Int(text.parse().map_err(bad)?),
            b'$' => {
                let len: i64 = text.parse().map_err(bad)?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let len: i64 = text.parse().map_err(bad)?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.try_read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            // RESP3, folded into the RESP2 shapes: a map is its keys and values in order, a set or push an
            // array, null a null bulk, a boolean or double its text as a status.
            b'%' | b'~' | b'>' => {
                let len: usize = text.parse().map_err(bad)?;
                let count = if line[0] == b'%' { 2 * len } else { len };
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    items.push(self.try_read_reply()?);
                }
                Reply::Array(Some(items))
            }
            b'_' => Reply::Bulk(None),
            b'#' | b',' => Reply::Status(text),
            other => return Err(std::io::Error::other(format!("unexpected reply type {other}"))),
        })
    }

    /// Whether the peer has closed the connection (reads EOF within the timeout).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }

    /// The underlying stream (for shutdown or socket options).
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}

/// What a server says of its replication role: `("master", None)` or `("slave", Some(master_port))`;
/// None when it does not answer within a second.
pub fn replication_role(port: u16) -> Option<(String, Option<u16>)> {
    let mut conn = RespConn::try_connect(port, Duration::from_secs(1)).ok()?;
    let Reply::Bulk(Some(text)) = conn.try_call(&[b"INFO", b"replication"]).ok()? else { return None };
    let text = String::from_utf8_lossy(&text).into_owned();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(str::to_string)
    };
    let role = field("role")?;
    let master_port = field("master_port").and_then(|p| p.trim().parse().ok());
    Some((role, master_port))
}

/// An `INFO` field of a server, if it answers.
pub fn info_field(port: u16, section: &str, name: &str) -> Option<String> {
    let mut conn = RespConn::try_connect(port, Duration::from_secs(1)).ok()?;
    let Reply::Bulk(Some(text)) = conn.try_call(&[b"INFO", section.as_bytes()]).ok()? else { return None };
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_string())
}

/// `calls` of a command in a server's `INFO commandstats` (0 when never called).
pub fn calls(port: u16, command: &str) -> u64 {
    let Some(stats) = info_field(port, "commandstats", &format!("cmdstat_{command}")) else { return 0 };
    stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The connections the proxy holds on the server at `port`, from `CLIENT LIST`, as (all, speaking RESP3): our
/// own connection and replicas' replication links are left out.
pub fn proxy_connections(port: u16) -> (usize, usize) {
    let mut conn = RespConn::connect(port);
    let Reply::Bulk(Some(list)) = conn.call(&[b"CLIENT", b"LIST"]) else { panic!("CLIENT LIST") };
    let list = String::from_utf8_lossy(&list).into_owned();
    let proxy: Vec<&str> =
        list.lines().filter(|l| !l.contains("cmd=client|list") && !l.contains(" flags=S ")).collect();
    (proxy.len(), proxy.iter().filter(|l| l.split_whitespace().any(|field| field == "resp=3")).count())
}

/// Resets the command statistics of every server (`CONFIG RESETSTAT`), so that [`calls`] counts from now.
pub fn reset_stats(servers: &[RedisServer]) {
    for server in servers {
        assert_eq!(server.connect().call(&[b"CONFIG", b"RESETSTAT"]), status("OK"));
    }
}

/// `GET path` from the HTTP listener on 127.0.0.1:`port`: the status code and the body, or None when it does not
/// answer within 5 s.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The DOM of the page at `url` after its script ran, as headless Chromium (Debian's `chromium`) dumps it.
pub fn chromium_dom(url: &str) -> String {
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-dev-shm-usage", "--dump-dom", url])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}): install it with `apt-get install chromium`"));
    assert!(output.status.success(), "chromium --dump-dom {url} failed: {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Saves a screenshot of the page at `url`, as headless Chromium draws it in a `width` x `height` window, to the
/// PNG file `path`.
pub fn chromium_screenshot(url: &str, path: &Path, width: u32, height: u32) {
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium ({e}): install it with `apt-get install chromium`"));
    assert!(output.status.success(), "chromium --screenshot {url} failed: {:?}", output.status);
}

/// Encodes a command as a RESP multibulk.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Shorthand for a bulk reply holding `s`.
pub fn bulk(s: &[u8]) -> Reply {
    Reply::Bulk(Some(s.to_vec()))
}

/// Shorthand for a `+status` reply.
pub fn status(s: &str) -> Reply {
    Reply::Status(s.to_string())
}
