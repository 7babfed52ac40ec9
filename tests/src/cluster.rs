//! Replication set-ups for the failover tests and the outage measurement: a master with replicas, a steady
//! write load that measures the outage a client sees, and checks of who replicates whom.

use crate::{replication_role, status, wait_until, RedisServer, Reply, RespConn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the tests wait for a topology to settle.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// A master on the first server and replicas of it on the others.
pub fn cluster(replicas: usize) -> Vec<RedisServer> {
    cluster_with(replicas, &[])
}

/// Like [`cluster`], every server started with `extra_args` (e.g. `["--enable-debug-command", "local"]`).
pub fn cluster_with(replicas: usize, extra_args: &[&str]) -> Vec<RedisServer> {
    let master = RedisServer::start_with(extra_args);
    let mut servers = vec![];
    for _ in 0..replicas {
        servers.push(RedisServer::start_replica_of_with(&master, extra_args));
    }
    servers.insert(0, master);
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    assert!(
        wait_until(CONVERGE, || ports[1..]
            .iter()
            .all(|p| replication_role(*p) == Some(("slave".into(), Some(ports[0]))))),
        "replicas did not attach"
    );
    servers
}

/// Like [`cluster_with`], but the replicas synchronise without Redis's default 5 s diskless-sync delay and have
/// finished their initial synchronisation on return, so a promoted replica holds every earlier write.
pub fn synced_cluster(replicas: usize, extra_args: &[&str]) -> Vec<RedisServer> {
    let mut args = vec!["--repl-diskless-sync-delay", "0"];
    args.extend_from_slice(extra_args);
    let servers = cluster_with(replicas, &args);
    wait_caught_up(&servers[0]);
    servers
}

/// The servers' ports.
pub fn ports(servers: &[RedisServer]) -> Vec<u16> {
    servers.iter().map(|s| s.port).collect()
}

/// Waits until both replicas have every write the master has acknowledged so far, to any client. `WAIT` counts
/// the replicas that acknowledged the calling connection's own last write (none at all for a fresh connection,
/// which is then answered at once even while the replication stream is not flowing), so this connection first
/// writes something of its own: a `PUBLISH`, replicated like a write, which changes no key.
pub fn wait_caught_up(master: &RedisServer) {
    let mut conn = master.connect();
    let synced = wait_until(CONVERGE, || {
        conn.call(&[b"PUBLISH", b"redis-proxy-tests:caught-up", b"1"]);
        conn.call(&[b"WAIT", b"2", b"1000"]) == Reply::Int(2)
    });
    assert!(synced, "replicas did not acknowledge the writes");
}

/// The port of the one server that reports role:master among `candidates`, once exactly one does and every
/// other reachable candidate replicates it.
pub fn converged_master(candidates: &[u16]) -> Option<u16> {
    let roles: Vec<_> = candidates.iter().map(|p| (*p, replication_role(*p))).collect();
    let masters: Vec<u16> =
        roles.iter().filter(|(_, r)| r.as_ref().is_some_and(|(role, _)| role == "master")).map(|(p, _)| *p).collect();
    let [master] = masters[..] else { return None };
    let all_follow = roles.iter().all(|(port, role)| match role {
        None => true,
        Some((r, _)) if r == "master" => *port == master,
        Some((_, of)) => *of == Some(master),
    });
    all_follow.then_some(master)
}

/// A background writer of sequenced keys; see [`start_write_load`].
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<WriteStats>,
}

/// What a [`WriteLoad`] saw.
#[derive(Debug)]
pub struct WriteStats {
    /// Writes acknowledged with +OK.
    pub acked: usize,
    /// Writes that got an error reply or a broken connection.
    pub errors: usize,
    /// The longest time between two acknowledged writes: the outage a client saw.
    pub longest_gap: Duration,
}

/// Writes sequenced keys through the proxy every few ms until stopped (or 60 s), recording the longest gap
/// between two acknowledged writes: the outage a client sees.
pub fn start_write_load(port: u16) -> WriteLoad {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        let mut stats = WriteStats { acked: 0, errors: 0, longest_gap: Duration::ZERO };
        let mut last_ack = Instant::now();
        let mut conn: Option<RespConn> = None;
        let mut seq = 0u64;
        while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            if conn.is_none() {
                conn = RespConn::try_connect(port, Duration::from_secs(5)).ok();
            }
            if let Some(c) = conn.as_mut() {
                let key = format!("load:{seq}");
                match c.try_call(&[b"SET", key.as_bytes(), b"x"]) {
                    Ok(reply) if reply == status("OK") => {
                        stats.acked += 1;
                        stats.longest_gap = stats.longest_gap.max(last_ack.elapsed());
                        last_ack = Instant::now();
                    }
                    Ok(_) => stats.errors += 1,
                    Err(_) => {
                        stats.errors += 1;
                        conn = None;
                    }
                }
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        stats
    });
    WriteLoad { stop, handle }
}

impl WriteLoad {
    /// Stops the load and returns what it saw.
    pub fn finish(self) -> WriteStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("write load thread")
    }
}
