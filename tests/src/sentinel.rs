//! Redis Sentinel for the Sentinel-mode tests: `redis-server CONF --sentinel` processes on free loopback ports,
//! each with its own config file (Sentinel rewrites it), killed by PID on drop.

use crate::{free_port, scratch_dir, wait_until, Reply, RespConn};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name the tests' sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";

/// The sentinels' `down-after-milliseconds`. Not 1000: Sentinel reconnects a link at most once a second, and after
/// a failover its link to the new master keeps the last reconnect time of the dead one, so the first PING to the
/// new master may go out a full second after the switch, and a sentinel then counts the master it just promoted as
/// down before its first PONG. The other sentinels' answers that the old master was down still count for 5 s, so
/// that one sentinel can fail it over again (seen in CI: `+sdown` of the new master 1.00-1.03 s after
/// `+switch-master`, `-sdown` one timer tick later; see `bench/sentinel_refailover.sh`). Redis's own Sentinel tests
/// use 2000.
pub const DOWN_AFTER_MS: u64 = 2000;

/// One sentinel process.
pub struct Sentinel {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Sentinel {
    /// Starts a sentinel monitoring the master on `master_port` as [`MASTER_NAME`] with quorum 2, a
    /// [`DOWN_AFTER_MS`] `down-after-milliseconds` and a 5 s `failover-timeout`; waits until it answers PING.
    pub fn start(master_port: u16) -> Sentinel {
        Sentinel::start_with(master_port, "")
    }

    /// Like [`Sentinel::start`], with `extra` lines appended to its configuration (e.g. `requirepass ...`); waits
    /// until it accepts connections.
    pub fn start_with(master_port: u16, extra: &str) -> Sentinel {
        let port = free_port();
        let dir = scratch_dir(&format!("sentinel-{port}"));
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\nloglevel notice\nlogfile {dir}/sentinel.log\ndir {dir}\n\
             sentinel resolve-hostnames yes\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 2\n{extra}\n",
            dir = dir.display()
        );
        let path = dir.join("sentinel.conf");
        std::fs::write(&path, config).expect("write sentinel config");
        let child = Command::new("redis-server")
            .arg(&path)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e}): apt-get install redis-server"));
        let sentinel = Sentinel { port, child: Some(child), dir };
        assert!(
            wait_until(Duration::from_secs(10), || RespConn::try_connect(port, Duration::from_secs(1))
                .and_then(|mut c| c.try_call(&[b"PING"]))
                .is_ok_and(|r| matches!(r, Reply::Status(_) | Reply::Error(_)))),
            "sentinel on port {port} did not answer"
        );
        sentinel
    }

    /// Stops the sentinel (SIGSTOP) as a network partition would look to its peers: connections are accepted
    /// by the kernel, nothing is answered. Killing it later resumes it first.
    pub fn stop(&self) {
        let pid = self.child.as_ref().expect("sentinel is running").id().to_string();
        let status = Command::new("kill").args(["-STOP", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -STOP {pid} failed");
    }

    /// What the sentinel has logged (its events: `+sdown`, `+switch-master`, `+convert-to-slave`, `+tilt` ...).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }

    /// SIGKILLs the sentinel and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn call(&self, args: &[&[u8]]) -> Option<Reply> {
        RespConn::try_connect(self.port, Duration::from_secs(1)).ok()?.try_call(args).ok()
    }

    /// The port of the master it names now.
    pub fn master_port(&self) -> Option<u16> {
        master_named_by(self.port)
    }

    /// How many entries `SENTINEL <what> mymaster` lists (`sentinels`, `replicas`).
    pub fn count(&self, what: &str) -> usize {
        match self.call(&[b"SENTINEL", what.as_bytes(), MASTER_NAME.as_bytes()]) {
            Some(Reply::Array(Some(items))) => items.len(),
            _ => 0,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port of the master the sentinel on `port` names now, if it answers.
pub fn master_named_by(port: u16) -> Option<u16> {
    let mut conn = RespConn::try_connect(port, Duration::from_secs(1)).ok()?;
    let reply = conn.try_call(&[b"SENTINEL", b"get-master-addr-by-name", MASTER_NAME.as_bytes()]).ok()?;
    let Reply::Array(Some(items)) = reply else { return None };
    match items.get(1)? {
        Reply::Bulk(Some(port)) => String::from_utf8_lossy(port).parse().ok(),
        _ => None,
    }
}

/// Three sentinels watching the master on `master_port`, returned once each knows the other two and `replicas`
/// replicas (Sentinel learns them from the master's `INFO` and the hello channel, within a few seconds).
pub fn three_sentinels(master_port: u16, replicas: usize) -> Vec<Sentinel> {
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master_port)).collect();
    let ready = wait_until(Duration::from_secs(20), || {
        sentinels.iter().all(|s| s.count("sentinels") == 2 && s.count("replicas") == replicas)
    });
    assert!(ready, "the sentinels did not discover each other and the replicas");
    sentinels
}

/// The `"sentinel"` config section for a proxy following `sentinels`, with `extra` members inside it.
pub fn sentinel_section(sentinels: &[u16], extra: &str) -> String {
    let list: Vec<String> = sentinels.iter().map(|p| format!(r#"{{"host": "127.0.0.1", "port": {p}}}"#)).collect();
    let extra = if extra.is_empty() { String::new() } else { format!(", {extra}") };
    format!(r#""sentinel": {{"sentinels": [{}], "master_name": "{MASTER_NAME}"{extra}}}"#, list.join(", "))
}
