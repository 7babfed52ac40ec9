//! Issue 3 end to end: a master with two replicas behind the proxy; the master is killed, hung, restarted;
//! writes must resume on a promoted replica, and every server must end up replicating the new master.

use redis_proxy_tests::cluster::{cluster, converged_master, ports, start_write_load, wait_caught_up};
use redis_proxy_tests::{bulk, replication_role, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::time::{Duration, Instant};

const FAST: &str = r#""check_period": 100"#;
const CONVERGE: Duration = redis_proxy_tests::cluster::CONVERGE;

/// Waits until a write through the proxy succeeds; returns how long it took.
fn wait_for_write(proxy: &Proxy) -> Duration {
    let started = Instant::now();
    let ok = wait_until(CONVERGE, || {
        RespConn::try_connect(proxy.port, Duration::from_secs(5))
            .and_then(|mut c| c.try_call(&[b"SET", b"probe-write", b"1"]))
            .is_ok_and(|r| r == status("OK"))
    });
    assert!(ok, "writes did not resume through the proxy; its log:\n{}", proxy.log());
    started.elapsed()
}

fn write_sequenced_keys(proxy: &Proxy, prefix: &str, count: usize) {
    let mut conn = proxy.connect();
    for i in 0..count {
        let key = format!("{prefix}:{i}");
        assert_eq!(conn.call(&[b"SET", key.as_bytes(), i.to_string().as_bytes()]), status("OK"));
    }
}

fn assert_keys_present(port: u16, prefix: &str, count: usize) {
    let mut conn = RespConn::connect(port);
    for i in 0..count {
        let key = format!("{prefix}:{i}");
        assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(i.to_string().as_bytes()), "acknowledged {key} lost");
    }
}

#[test]
fn sigkill_of_the_master_promotes_a_replica_and_the_old_master_rejoins_as_its_replica() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(2);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        write_sequenced_keys(&proxy, "before", 500);
        wait_caught_up(&servers[0]);

        let load = start_write_load(proxy.port);
        std::thread::sleep(Duration::from_millis(300));
        servers[0].kill();
        wait_for_write(&proxy);
        std::thread::sleep(Duration::from_millis(300));
        let stats = load.finish();
        eprintln!("{runtime:?}: SIGKILL failover, check_period 100: {stats:?}");

        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()), "replicas did not converge");
        let new_master = converged_master(&all[1..]).unwrap();
        assert_keys_present(new_master, "before", 500);
        // The proxy routes writes to the new master.
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"after", b"1"]), status("OK"));
        assert_eq!(RespConn::connect(new_master).call(&[b"GET", b"after"]), bulk(b"1"));

        // The old master comes back as a standalone master and must be re-pointed before it gets any request.
        servers[0].restart();
        let rejoined = wait_until(CONVERGE, || replication_role(all[0]) == Some(("slave".into(), Some(new_master))));
        assert!(rejoined, "old master was not re-attached; proxy log:\n{}", proxy.log());
        assert_eq!(converged_master(&all), Some(new_master));
    }
}

/// A stopped process still accepts connections (the kernel does), so it is busy, not dead: it is failed over
/// only after `busy_down_after` (short here; 30 s by default).
#[test]
fn a_master_stopped_longer_than_busy_down_after_is_failed_over_and_re_attached_when_it_wakes() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, &format!(r#"{FAST}, "busy_down_after": 1500"#));
        write_sequenced_keys(&proxy, "before", 200);
        wait_caught_up(&servers[0]);
        let load = start_write_load(proxy.port);
        std::thread::sleep(Duration::from_millis(300));
        servers[0].signal("STOP");
        wait_for_write(&proxy);
        let stats = load.finish();
        eprintln!("{runtime:?}: SIGSTOP failover, check_period 100, busy_down_after 1500: {stats:?}");
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()));
        let new_master = converged_master(&all[1..]).unwrap();
        assert_keys_present(new_master, "before", 200);
        servers[0].signal("CONT");
        let rejoined = wait_until(CONVERGE, || replication_role(all[0]) == Some(("slave".into(), Some(new_master))));
        assert!(rejoined, "woken master was not re-attached; proxy log:\n{}", proxy.log());
    }
}

#[test]
fn two_masters_killed_in_a_row() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(2);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        servers[0].kill();
        wait_for_write(&proxy);
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()));
        let second = converged_master(&all[1..]).unwrap();
        write_sequenced_keys(&proxy, "mid", 100);
        let index = all.iter().position(|p| *p == second).unwrap();
        // The remaining replica resynchronises with its new master; only then can it take over without loss.
        let mut conn = RespConn::connect(second);
        let synced = wait_until(CONVERGE, || conn.call(&[b"WAIT", b"1", b"1000"]) == Reply::Int(1));
        assert!(synced, "the last replica did not catch up; proxy log:\n{}", proxy.log());
        servers[index].kill();
        wait_for_write(&proxy);
        let last = all.iter().copied().find(|p| *p != all[0] && *p != second).unwrap();
        assert!(wait_until(CONVERGE, || replication_role(last) == Some(("master".into(), None))));
        assert_keys_present(last, "mid", 100);
    }
}

#[test]
fn all_servers_down_then_one_returns() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(1);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, r#""check_period": 100, "hold_ms": 500"#);
        servers[0].kill();
        servers[1].kill();
        // Once the proxy knows both are down. A request in the moment before may instead be refused as not sent
        // (docs/limits.md): under load the tokio runtime can read it before the closed connections.
        for port in &all {
            let down = format!("server 127.0.0.1:{port} is down");
            assert!(wait_until(Duration::from_secs(5), || proxy.log().contains(&down)), "{down}: {}", proxy.log());
        }
        let mut conn = proxy.connect();
        // Held for hold_ms, then a clear error; the client connection stays open.
        let reply = conn.call(&[b"SET", b"k", b"v"]);
        assert!(matches!(&reply, Reply::Error(e) if e.starts_with("MASTERDOWN")), "got {reply:?}");
        assert_eq!(conn.call(&[b"PING"]), status("PONG"));
        // The replica comes back still configured as a replica of the dead master: the proxy promotes it.
        servers[1].restart();
        wait_for_write(&proxy);
        assert_eq!(replication_role(all[1]), Some(("master".into(), None)));
        assert_eq!(conn.call(&[b"SET", b"k", b"v"]), status("OK"));
    }
}

#[test]
fn two_proxies_converge_on_one_master() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(2);
        let all = ports(&servers);
        let a = Proxy::start(runtime, &all, FAST);
        let mut reversed = all.clone();
        reversed.reverse();
        let b = Proxy::start(runtime, &reversed, FAST);
        servers[0].kill();
        wait_for_write(&a);
        wait_for_write(&b);
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()));
        let master = converged_master(&all[1..]).unwrap();
        for (proxy, key) in [(&a, "via-a"), (&b, "via-b")] {
            let mut conn = proxy.connect();
            let r = conn.call(&[b"SET", key.as_bytes(), b"1"]);
            assert_eq!(r, status("OK"), "{key}: A log:\n{}\nB log:\n{}", a.log(), b.log());
        }
        let mut direct = RespConn::connect(master);
        assert_eq!(direct.call(&[b"GET", b"via-a"]), bulk(b"1"));
        assert_eq!(direct.call(&[b"GET", b"via-b"]), bulk(b"1"));
    }
}

#[test]
fn an_existing_setup_is_adopted_without_replicaof() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        let all = ports(&servers);
        let mut order = all.clone();
        order.rotate_left(1);
        let proxy = Proxy::start(runtime, &order, FAST);
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"adopted", b"1"]), status("OK"));
        assert_eq!(RespConn::connect(all[0]).call(&[b"GET", b"adopted"]), bulk(b"1"));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!proxy.log().contains("REPLICAOF"), "no REPLICAOF may be sent; log:\n{}", proxy.log());
        assert_eq!(converged_master(&all), Some(all[0]));
    }
}

#[test]
fn a_stray_replica_is_re_pointed_at_the_master() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let other = RedisServer::start();
        let stray = RedisServer::start_replica_of(&other);
        // `other` is a master with a replica, `master` one without: the rule picks `other` (most replicas).
        let all = vec![master.port, other.port, stray.port];
        let proxy = Proxy::start(runtime, &all, FAST);
        assert!(wait_until(CONVERGE, || converged_master(&all) == Some(other.port)), "log:\n{}", proxy.log());
    }
}
