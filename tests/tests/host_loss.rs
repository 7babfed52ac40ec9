//! Host loss for real: the master runs in a network namespace of its own, reached over a veth pair with
//! link-local (169.254.x.y) addresses; its replicas run on the host's loopback and replicate from it over the veth.
//! Taking the namespace's end of the link down makes the master unreachable (new connections time out, nothing is
//! refused or reset): the proxy must fail over within `down_after` plus one `check_period`, not wait for the long
//! busy bound.
//!
//! Needs root (`ip netns add`); skips with a message only where namespaces are refused.

use redis_proxy_tests::cluster::converged_master;
use redis_proxy_tests::{free_port, info_field, replication_role, status, wait_until, Proxy, RedisServer};
use redis_proxy_tests::{RespConn, Runtime};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHECK_PERIOD_MS: u64 = 100;
const DOWN_AFTER_MS: u64 = 500;

/// Runs `ip` with `args`; Err with its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}): the host-loss test needs iproute2 (`apt-get install iproute2`)")
    });
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace with a veth pair to the host and a `redis-server` inside; all removed on drop.
struct IsolatedHost {
    namespace: String,
    host_if: String,
    ns_if: String,
    /// The server's address, reachable from the host while the link is up.
    address: String,
    port: u16,
    server: Option<Child>,
    dir: PathBuf,
}

impl IsolatedHost {
    /// Creates namespace number `n` of this process; None when the kernel or sandbox refuses namespaces.
    fn create(n: u32) -> Option<IsolatedHost> {
        let pid = std::process::id();
        let namespace = format!("rpt-{pid}-{n}");
        if let Err(e) = ip(&["netns", "add", &namespace]) {
            eprintln!("SKIPPED host_loss: this kernel or sandbox refuses network namespaces ({e})");
            return None;
        }
        // From here on, Drop removes whatever was made.
        let slot = (pid + n) % 64 * 4;
        let subnet = 1 + pid / 64 % 254;
        let mut host = IsolatedHost {
            namespace,
            host_if: format!("rph{pid}x{n}"),
            ns_if: format!("rpn{pid}x{n}"),
            address: format!("169.254.{subnet}.{}", slot + 2),
            port: free_port(),
            server: None,
            dir: std::env::temp_dir().join(format!("redis-proxy-tests-{pid}-netns-{n}")),
        };
        host.wire(&format!("169.254.{subnet}.{}/30", slot + 1));
        host.start_server();
        Some(host)
    }

    fn wire(&self, host_cidr: &str) {
        let (ns, host_if, ns_if) = (self.namespace.as_str(), self.host_if.as_str(), self.ns_if.as_str());
        let ns_cidr = format!("{}/30", self.address);
        let steps: [&[&str]; 7] = [
            &["link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            &["link", "set", ns_if, "netns", ns],
            &["addr", "add", host_cidr, "dev", host_if],
            &["link", "set", host_if, "up"],
            &["-n", ns, "addr", "add", &ns_cidr, "dev", ns_if],
            &["-n", ns, "link", "set", ns_if, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("setting up the namespace's link failed: {e}"));
        }
    }

    fn start_server(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("create scratch dir");
        let port = self.port.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "redis-server", "--port", &port, "--bind", &self.address])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .args(["--protected-mode", "no", "--repl-diskless-sync-delay", "0", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server in the namespace");
        self.server = Some(child);
        let answers = wait_until(Duration::from_secs(10), || {
            RespConn::try_connect_addr(self.socket_addr(), Duration::from_millis(500))
                .and_then(|mut c| c.try_call(&[b"PING"]))
                .is_ok_and(|r| r == status("PONG"))
        });
        assert!(answers, "redis-server in namespace {} did not answer PING over the veth", self.namespace);
    }

    fn socket_addr(&self) -> SocketAddr {
        format!("{}:{}", self.address, self.port).parse().expect("a socket address")
    }

    /// Takes the namespace's end of the link down: from the host the server is unreachable, not refused.
    fn cut(&self) {
        ip(&["-n", &self.namespace, "link", "set", &self.ns_if, "down"]).expect("cut the link");
    }
}

impl Drop for IsolatedHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.namespace]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_unreachable_master_is_failed_over_within_down_after() {
    let _serial = redis_proxy_tests::exclusive();
    for (n, &runtime) in Runtime::ALL.iter().enumerate() {
        let Some(host) = IsolatedHost::create(n as u32) else { return };
        let master_port = host.port.to_string();
        let replica_args = ["--replicaof", &host.address, &master_port, "--repl-diskless-sync-delay", "0"];
        let replicas = [RedisServer::start_with(&replica_args), RedisServer::start_with(&replica_args)];
        let synced = wait_until(Duration::from_secs(15), || {
            replicas.iter().all(|r| info_field(r.port, "replication", "master_link_status").as_deref() == Some("up"))
        });
        assert!(synced, "the replicas did not synchronise with the namespace's master over the veth");

        let servers =
            [(host.address.as_str(), host.port), ("127.0.0.1", replicas[0].port), ("127.0.0.1", replicas[1].port)];
        let config = format!(r#""check_period": {CHECK_PERIOD_MS}, "down_after": {DOWN_AFTER_MS}"#);
        let proxy = Proxy::start_at(runtime, &servers, &config);
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"before", b"1"]), status("OK"));
        let mut direct = RespConn::try_connect_addr(host.socket_addr(), Duration::from_secs(2)).expect("connect");
        assert_eq!(direct.call(&[b"GET", b"before"]), redis_proxy_tests::bulk(b"1"), "writes go to the namespace");
        // Replication is asynchronous: a write the replicas have not received yet when the link goes is lost with
        // the master, whatever the proxy does. The check below is about the proxy, so the cut waits for it.
        let replicated = wait_until(Duration::from_secs(10), || {
            replicas.iter().all(|r| r.connect().call(&[b"GET", b"before"]) == redis_proxy_tests::bulk(b"1"))
        });
        assert!(replicated, "{runtime:?}: the replicas did not receive the first write over the veth");

        host.cut();
        let cut = Instant::now();
        let replica_ports = [replicas[0].port, replicas[1].port];
        let promoted = wait_until(Duration::from_secs(40), || {
            replica_ports.iter().any(|p| replication_role(*p).is_some_and(|(role, _)| role == "master"))
        });
        let took = cut.elapsed();
        eprintln!("{runtime:?}: master unreachable; a replica was promoted after {took:?}");
        assert!(promoted, "{runtime:?}: no failover after the link was cut; proxy log:\n{}", proxy.log());
        // down_after + one check_period, plus a margin for a loaded 2-core machine.
        let bound = Duration::from_millis(DOWN_AFTER_MS + CHECK_PERIOD_MS + 1000);
        assert!(took <= bound, "{runtime:?}: failover took {took:?} (bound {bound:?}); log:\n{}", proxy.log());
        assert!(proxy.log().contains("promoting"), "{runtime:?}: the proxy did not log the promotion");

        assert!(wait_until(Duration::from_secs(15), || converged_master(&replica_ports).is_some()));
        let new_master = converged_master(&replica_ports).unwrap();
        let resumed = wait_until(Duration::from_secs(15), || {
            RespConn::try_connect(proxy.port, Duration::from_secs(5))
                .and_then(|mut c| c.try_call(&[b"SET", b"after", b"1"]))
                .is_ok_and(|r| r == status("OK"))
        });
        assert!(resumed, "{runtime:?}: writes did not resume after the failover; log:\n{}", proxy.log());
        assert_eq!(RespConn::connect(new_master).call(&[b"GET", b"before"]), redis_proxy_tests::bulk(b"1"));
        assert_eq!(RespConn::connect(new_master).call(&[b"GET", b"after"]), redis_proxy_tests::bulk(b"1"));
    }
}
