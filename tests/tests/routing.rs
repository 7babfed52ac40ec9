//! Issue 4 end to end: read/write splitting over a master and two replicas, and the commands the proxy refuses
//! or answers itself.

use redis_proxy_tests::{
    bulk, calls, info_field, replication_role, reset_stats, status, wait_until, Proxy, RedisServer, Reply, RespConn,
    Runtime,
};
use std::time::Duration;

fn cluster() -> Vec<RedisServer> {
    let master = RedisServer::start();
    let replicas = [RedisServer::start_replica_of(&master), RedisServer::start_replica_of(&master)];
    let ok = wait_until(Duration::from_secs(15), || {
        replicas.iter().all(|r| info_field(r.port, "replication", "master_link_status").as_deref() == Some("up"))
    });
    assert!(ok, "replicas did not link");
    let [a, b] = replicas;
    vec![master, a, b]
}

/// Starts a proxy and waits until it knows both replicas are linked (its probes have seen them).
fn proxy_for(runtime: Runtime, servers: &[RedisServer], mode: &str) -> Proxy {
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let proxy = Proxy::start(runtime, &ports, &format!(r#""mode": "{mode}", "check_period": 100"#));
    std::thread::sleep(Duration::from_millis(300));
    proxy
}

/// Writes `key` through the proxy and waits until both replicas have it.
fn set_everywhere(servers: &[RedisServer], conn: &mut RespConn, key: &[u8], value: &[u8]) {
    assert_eq!(conn.call(&[b"SET", key, value]), status("OK"));
    // A `WAIT` of our own would count acknowledgements of its connection's last write, not of this one.
    for replica in &servers[1..] {
        let mut direct = replica.connect();
        let replicated = wait_until(Duration::from_secs(10), || direct.call(&[b"GET", key]) == bulk(value));
        assert!(replicated, "replica {} has {}", replica.port, String::from_utf8_lossy(key));
    }
}

#[test]
fn reads_go_to_replicas_round_robin_and_writes_to_the_master() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster();
        let proxy = proxy_for(runtime, &servers, "readsToSlaves");
        let mut conn = proxy.connect();
        set_everywhere(&servers, &mut conn, b"k", b"v");
        reset_stats(&servers);
        let names: [&[u8]; 3] = [b"GET", b"get", b"gEt"];
        for i in 0..10_000 {
            assert_eq!(conn.call(&[names[i % 3], b"k"]), bulk(b"v"));
        }
        let (master, a, b) =
            (calls(servers[0].port, "get"), calls(servers[1].port, "get"), calls(servers[2].port, "get"));
        assert_eq!(master, 0, "no read may reach the master");
        assert_eq!(a + b, 10_000);
        assert!((4_000..=6_000).contains(&a), "uneven split: {a} / {b}");
        // Writes: a SET that reached a replica would come back -READONLY.
        for i in 0..100 {
            assert_eq!(conn.call(&[b"set", b"w", i.to_string().as_bytes()]), status("OK"));
        }
        assert_eq!(calls(servers[0].port, "set"), 100);
    }
}

#[test]
fn a_pipeline_of_reads_and_writes_keeps_its_order() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster();
        let proxy = proxy_for(runtime, &servers, "readsToSlaves");
        let mut conn = proxy.connect();
        set_everywhere(&servers, &mut conn, b"a", b"1");
        for _ in 0..50 {
            let mut batch = Vec::new();
            for args in [&[&b"GET"[..], b"a"][..], &[b"SET", b"b", b"2"], &[b"GET", b"a"], &[b"SET", b"c", b"3"]] {
                batch.extend_from_slice(&redis_proxy_tests::encode_command(args));
            }
            conn.send_raw(&batch);
            assert_eq!(conn.read_reply(), bulk(b"1"));
            assert_eq!(conn.read_reply(), status("OK"));
            assert_eq!(conn.read_reply(), bulk(b"1"));
            assert_eq!(conn.read_reply(), status("OK"));
        }
    }
}

#[test]
fn a_stopped_replica_stops_getting_reads() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster();
        let proxy = proxy_for(runtime, &servers, "readsToSlaves");
        let mut conn = proxy.connect();
        set_everywhere(&servers, &mut conn, b"k", b"v");
        servers[1].signal("STOP");
        // Within about a check period (100 ms) its late probe takes it out of the rotation.
        std::thread::sleep(Duration::from_millis(250));
        reset_stats(&servers[2..]);
        let mut conn = RespConn::try_connect(proxy.port, Duration::from_secs(2)).unwrap();
        for _ in 0..200 {
            assert_eq!(conn.try_call(&[b"GET", b"k"]).expect("a read hung on the stopped replica"), bulk(b"v"));
        }
        assert_eq!(calls(servers[2].port, "get"), 200);
        servers[1].signal("CONT");
    }
}

#[test]
fn all_to_master_sends_nothing_to_replicas() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster();
        let proxy = proxy_for(runtime, &servers, "allToMaster");
        reset_stats(&servers);
        let mut conn = proxy.connect();
        for _ in 0..1000 {
            assert_eq!(conn.call(&[b"GET", b"k"]), Reply::Bulk(None));
        }
        assert_eq!(calls(servers[0].port, "get"), 1000);
        assert_eq!(calls(servers[1].port, "get") + calls(servers[2].port, "get"), 0);
    }
}

#[test]
fn topology_commands_are_refused_unless_allowed() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster();
        let proxy = proxy_for(runtime, &servers, "allToMaster");
        let mut conn = proxy.connect();
        for command in [
            &[&b"REPLICAOF"[..], b"NO", b"ONE"][..],
            &[b"slaveof", b"127.0.0.1", b"1"],
            &[b"SHUTDOWN"],
            &[b"FAILOVER"],
            &[b"CONFIG", b"SET", b"port", b"1"],
            &[b"DEBUG", b"RESTART"],
        ] {
            let reply = conn.call(command);
            assert!(matches!(&reply, Reply::Error(e) if e.contains("redis-proxy refuses")), "{command:?}: {reply:?}");
        }
        assert_eq!(replication_role(servers[0].port), Some(("master".into(), None)));
        assert_eq!(conn.call(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]), status("OK"));

        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let permissive = Proxy::start(runtime, &ports, r#""allow_topology_commands": true"#);
        let mut conn = permissive.connect();
        assert_eq!(conn.call(&[b"CONFIG", b"SET", b"replica-priority", b"50"]), status("OK"));
    }
}
