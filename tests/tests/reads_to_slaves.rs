//! End to end: no failover, removal or read split breaks a `SCAN`-family iteration, and with `read_your_writes` a
//! client reads its own writes while other clients' reads still go to the replicas.

use redis_proxy_tests::cluster::{cluster, ports, wait_caught_up};
use redis_proxy_tests::{
    bulk, calls, encode_command, reset_stats, status, Proxy, RedisServer, Reply, RespConn, Runtime,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys, and members of each collection: enough that every collection is a real hash table (not a listpack),
/// where cursors depend on the process's hash seed.
const ITEMS: usize = 2000;

/// A proxy in `readsToSlaves` with a fast probe, once its probes have seen both replicas linked.
fn proxy(runtime: Runtime, servers: &[RedisServer], extra: &str) -> Proxy {
    let proxy =
        Proxy::start(runtime, &ports(servers), &format!(r#""mode": "readsToSlaves", "check_period": 100{extra}"#));
    std::thread::sleep(Duration::from_millis(300));
    proxy
}

/// Fills the master (directly) with `ITEMS` keys and a hash, set and sorted set of `ITEMS` members each, and
/// waits until both replicas have all of it.
fn populate(servers: &[RedisServer]) {
    let mut master = servers[0].connect();
    let mut batch = Vec::new();
    for i in 0..ITEMS {
        let (key, member) = (format!("key:{i}"), format!("member:{i}"));
        batch.extend(encode_command(&[b"SET", key.as_bytes(), b"v"]));
        batch.extend(encode_command(&[b"HSET", b"hash", member.as_bytes(), b"v"]));
        batch.extend(encode_command(&[b"SADD", b"set", member.as_bytes()]));
        batch.extend(encode_command(&[b"ZADD", b"zset", i.to_string().as_bytes(), member.as_bytes()]));
    }
    master.send_raw(&batch);
    for _ in 0..4 * ITEMS {
        assert!(!matches!(master.read_reply(), Reply::Error(_)));
    }
    wait_caught_up(&servers[0]);
}

/// Iterates `command` (`SCAN`, or `HSCAN`/`SSCAN`/`ZSCAN` of `key`) with `COUNT count` to cursor 0 and returns
/// every key or member it returned (for `HSCAN` and `ZSCAN`, the field or member of each pair).
fn iterate(conn: &mut RespConn, command: &str, key: Option<&str>, count: usize) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let mut cursor = b"0".to_vec();
    let pairs = matches!(command, "HSCAN" | "ZSCAN");
    let started = Instant::now();
    // A full iteration of ITEMS entries with COUNT >= 10 takes a few hundred calls; the bounds only stop a loop.
    for _ in 0..100 * ITEMS {
        assert!(started.elapsed() < Duration::from_secs(60), "{command} took over 60 s");
        let mut args: Vec<&[u8]> = vec![command.as_bytes()];
        args.extend(key.map(str::as_bytes));
        let count = count.to_string();
        args.extend([cursor.as_slice(), b"COUNT", count.as_bytes()]);
        let Reply::Array(Some(reply)) = conn.call(&args) else { panic!("{command} {cursor:?}: not an array") };
        let [Reply::Bulk(Some(next)), Reply::Array(Some(items))] = &reply[..] else {
            panic!("{command}: unexpected reply {reply:?}")
        };
        let step = if pairs { 2 } else { 1 };
        for item in items.iter().step_by(step) {
            let Reply::Bulk(Some(item)) = item else { panic!("{command}: item {item:?}") };
            seen.push(item.clone());
        }
        if next == b"0" {
            return seen;
        }
        cursor = next.clone();
    }
    panic!("{command} did not finish within {} calls", 100 * ITEMS)
}

#[test]
fn scan_family_iterations_see_every_entry_through_replicas() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        populate(&servers);
        let proxy = proxy(runtime, &servers, "");
        reset_stats(&servers);
        let mut conn = proxy.connect();
        let keys: HashSet<Vec<u8>> = (0..ITEMS).map(|i| format!("key:{i}").into_bytes()).collect();
        let members: HashSet<Vec<u8>> = (0..ITEMS).map(|i| format!("member:{i}").into_bytes()).collect();
        for count in [10, 100] {
            let seen: HashSet<Vec<u8>> = iterate(&mut conn, "SCAN", None, count).into_iter().collect();
            let missing = keys.difference(&seen).count();
            assert_eq!(missing, 0, "{runtime:?} SCAN COUNT {count}: {missing} of {ITEMS} keys never returned");
            for (command, key) in [("HSCAN", "hash"), ("SSCAN", "set"), ("ZSCAN", "zset")] {
                let seen: HashSet<Vec<u8>> = iterate(&mut conn, command, Some(key), count).into_iter().collect();
                assert_eq!(seen, members, "{runtime:?} {command} COUNT {count}");
            }
        }
        let on_master: u64 = ["scan", "hscan", "sscan", "zscan"].iter().map(|c| calls(servers[0].port, c)).sum();
        assert_eq!(on_master, 0, "{runtime:?}: the iterations ran on the replicas");
        assert!(calls(servers[1].port, "scan") + calls(servers[2].port, "scan") > 0);
    }
}

/// Takes `steps` calls of `SCAN ... COUNT 100` from cursor 0 on `conn`; returns the cursor to continue from and the
/// keys seen so far.
fn scan_steps(conn: &mut RespConn, steps: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut cursor, mut seen) = (b"0".to_vec(), Vec::new());
    for _ in 0..steps {
        let reply = conn.call(&[b"SCAN", &cursor, b"COUNT", b"100"]);
        let Reply::Array(Some(reply)) = reply else { panic!("SCAN {cursor:?} answered {reply:?}") };
        let [Reply::Bulk(Some(next)), Reply::Array(Some(items))] = &reply[..] else { panic!("SCAN {reply:?}") };
        seen.extend(items.iter().map(|item| match item {
            Reply::Bulk(Some(key)) => key.clone(),
            other => panic!("SCAN item {other:?}"),
        }));
        assert_ne!(next, b"0", "{ITEMS} keys take more than {steps} steps of COUNT 100");
        cursor = next.clone();
    }
    (cursor, seen)
}

/// Continues a `SCAN ... COUNT 100` iteration from `cursor` to its end; returns the keys it returned.
fn scan_rest(conn: &mut RespConn, mut cursor: Vec<u8>) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    for _ in 0..100 * ITEMS {
        let reply = conn.call(&[b"SCAN", &cursor, b"COUNT", b"100"]);
        let Reply::Array(Some(reply)) = reply else { panic!("SCAN {cursor:?} answered {reply:?}") };
        let [Reply::Bulk(Some(next)), Reply::Array(Some(items))] = &reply[..] else { panic!("SCAN {reply:?}") };
        seen.extend(items.iter().filter_map(|item| match item {
            Reply::Bulk(Some(key)) => Some(key.clone()),
            _ => None,
        }));
        if next == b"0" {
            return seen;
        }
        cursor = next.clone();
    }
    panic!("SCAN did not finish within {} calls", 100 * ITEMS)
}

/// The keys `populate` wrote.
fn every_key() -> HashSet<Vec<u8>> {
    (0..ITEMS).map(|i| format!("key:{i}").into_bytes()).collect()
}

/// Asserts that an iteration that returned `seen` returned every key `populate` wrote.
fn assert_complete(runtime: Runtime, case: &str, seen: Vec<Vec<u8>>) {
    let seen: HashSet<Vec<u8>> = seen.into_iter().collect();
    let missing = every_key().difference(&seen).count();
    assert_eq!(missing, 0, "{runtime:?}, {case}: {missing} of {ITEMS} keys never returned");
}

#[test]
fn a_cursor_of_a_replica_that_stopped_serving_reads_restarts_and_misses_nothing() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        populate(&servers);
        let proxy = proxy(runtime, &servers, "");
        reset_stats(&servers);
        let mut conn = proxy.connect();
        let (cursor, mut seen) = scan_steps(&mut conn, 3);
        let issuer = if calls(servers[1].port, "scan") == 3 { &servers[1] } else { &servers[2] };
        assert_eq!(calls(issuer.port, "scan"), 3, "{runtime:?}: the steps of one iteration stay on one replica");
        issuer.signal("STOP");
        // Within about a check period (100 ms) its late probe takes it out of the rotation.
        std::thread::sleep(Duration::from_millis(300));
        seen.extend(scan_rest(&mut conn, cursor));
        issuer.signal("CONT");
        assert_complete(runtime, "issuer stopped", seen);
    }
}

#[test]
fn in_all_to_master_a_scan_that_spans_a_failover_starts_again_on_the_new_master_and_misses_nothing() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = redis_proxy_tests::cluster::synced_cluster(2, &[]);
        populate(&servers);
        let proxy = Proxy::start(runtime, &ports(&servers), r#""check_period": 100"#);
        let mut conn = proxy.connect();
        let (cursor, mut seen) = scan_steps(&mut conn, 3);
        servers[0].kill();
        let replicas = [servers[1].port, servers[2].port];
        let promoted = redis_proxy_tests::wait_until(Duration::from_secs(20), || {
            replicas.iter().any(|p| redis_proxy_tests::replication_role(*p).is_some_and(|(role, _)| role == "master"))
        });
        assert!(promoted, "{runtime:?}: no replica was promoted; the proxy's log:\n{}", proxy.log());
        // Until the proxy routes to the new master the call is held; then it starts again there.
        seen.extend(scan_rest(&mut conn, cursor));
        assert_complete(runtime, "a failover in allToMaster", seen);
    }
}

/// The servers `PROXY SERVERS` lists, by address, in its order.
fn listed_servers(admin: &mut RespConn) -> Vec<String> {
    let Reply::Array(Some(lines)) = admin.call(&[b"PROXY", b"SERVERS"]) else { panic!("PROXY SERVERS") };
    lines
        .iter()
        .map(|line| match line {
            Reply::Bulk(Some(line)) => String::from_utf8_lossy(line).split_whitespace().next().unwrap_or("").into(),
            other => panic!("PROXY SERVERS line {other:?}"),
        })
        .collect()
}

/// Waits until `address` is listed (`present`) or not by the proxy's admin listener.
fn wait_listed(admin: &mut RespConn, address: &str, present: bool) {
    let done = redis_proxy_tests::wait_until(Duration::from_secs(20), || {
        listed_servers(admin).iter().any(|s| s == address) == present
    });
    assert!(done, "{address} listed: {:?}, expected present={present}", listed_servers(admin));
}

/// Starts an iteration of three steps whose steps a replica served, choosing the one listed `position` among the
/// servers (`last`, or not); returns the cursor, the keys so far, and the replica's address.
fn scan_on_replica(
    conn: &mut RespConn,
    admin: &mut RespConn,
    servers: &[RedisServer],
    last: bool,
) -> (Vec<u8>, Vec<Vec<u8>>, String) {
    for _ in 0..10 {
        reset_stats(servers);
        let (cursor, seen) = scan_steps(conn, 3);
        let Some(issuer) = servers[1..].iter().find(|s| calls(s.port, "scan") == 3) else { continue };
        let address = format!("127.0.0.1:{}", issuer.port);
        let listed = listed_servers(admin);
        if (listed.last() == Some(&address)) == last {
            return (cursor, seen, address);
        }
    }
    panic!("no iteration landed on the replica listed {}", if last { "last" } else { "first" })
}

#[test]
fn a_scan_goes_on_with_every_key_when_a_server_is_removed_by_proxy_remove_or_a_reload() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        populate(&servers);
        let admin_port = redis_proxy_tests::free_port();
        let proxy = proxy(runtime, &servers, &format!(r#", "admin_listen": "127.0.0.1:{admin_port}""#));
        let mut admin = RespConn::connect(admin_port);
        let mut conn = proxy.connect();
        let replica_linked = |port: u16| {
            redis_proxy_tests::info_field(port, "replication", "master_link_status").as_deref() == Some("up")
        };
        // Re-add each replica once the case is done, and wait until the proxy sends it reads again.
        let re_add = |admin: &mut RespConn, address: &str| {
            assert_eq!(admin.call(&[b"PROXY", b"ADD", address.as_bytes()]), status("OK"), "{runtime:?}");
            wait_listed(admin, address, true);
            let port: u16 = address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
            assert!(redis_proxy_tests::wait_until(Duration::from_secs(20), || replica_linked(port)));
            std::thread::sleep(Duration::from_millis(300));
        };

        // 1. The server listed before the cursor's own is removed (the cursor's server moves up one position):
        //    this used to index past the end of the server list and kill the proxy.
        let (cursor, mut seen, issuer) = scan_on_replica(&mut conn, &mut admin, &servers, true);
        let listed = listed_servers(&mut admin);
        let before = listed[listed.len() - 2].clone();
        assert_eq!(admin.call(&[b"PROXY", b"REMOVE", before.as_bytes()]), status("OK draining"), "{runtime:?}");
        wait_listed(&mut admin, &before, false);
        seen.extend(scan_rest(&mut conn, cursor));
        assert_complete(runtime, "the server listed before the cursor's removed", seen);
        re_add(&mut admin, &before);

        // 2. The cursor's own server is removed, while listed first among the replicas: the iteration starts again
        //    on the remaining replica.
        let (cursor, mut seen, issuer_2) = scan_on_replica(&mut conn, &mut admin, &servers, false);
        assert_eq!(admin.call(&[b"PROXY", b"REMOVE", issuer_2.as_bytes()]), status("OK draining"));
        wait_listed(&mut admin, &issuer_2, false);
        seen.extend(scan_rest(&mut conn, cursor));
        assert_complete(runtime, "the cursor's own server removed", seen);
        re_add(&mut admin, &issuer_2);

        // 3. The cursor's own server is removed by a reload of a configuration that no longer lists it.
        let (cursor, mut seen, issuer_3) = scan_on_replica(&mut conn, &mut admin, &servers, true);
        let config = std::fs::read_to_string(proxy.config_path()).expect("config");
        let port = issuer_3.rsplit(':').next().expect("port");
        let entry = format!(r#", {{"host": "127.0.0.1", "port": {port}}}"#);
        let shorter = if config.contains(&entry) {
            config.replace(&entry, "")
        } else {
            config.replace(&format!(r#"{{"host": "127.0.0.1", "port": {port}}}, "#), "")
        };
        assert_ne!(shorter, config, "{runtime:?}: {issuer_3} is in the configuration file");
        std::fs::write(proxy.config_path(), shorter).expect("rewrite the config");
        proxy.signal("HUP");
        wait_listed(&mut admin, &issuer_3, false);
        seen.extend(scan_rest(&mut conn, cursor));
        assert_complete(runtime, "the cursor's own server removed by a reload", seen);

        assert_eq!(conn.call(&[b"PING"]), status("PONG"), "{runtime:?}: the proxy is up; its log:\n{}", proxy.log());
        let _ = issuer;
    }
}

/// Reads `key` on a connection of its own until `stop` (bounded in count and time); returns how many it made.
fn background_reader(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut conn = RespConn::connect(port);
        let started = Instant::now();
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) && reads < 1_000_000 && started.elapsed() < Duration::from_secs(60) {
            assert_eq!(conn.call(&[b"GET", b"other"]), bulk(b"x"));
            reads += 1;
        }
        reads
    })
}

#[test]
fn read_your_writes_reads_back_every_write_while_other_reads_reach_replicas() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        assert_eq!(servers[0].connect().call(&[b"SET", b"other", b"x"]), status("OK"));
        wait_caught_up(&servers[0]);
        let proxy = proxy(runtime, &servers, r#", "read_your_writes": true"#);
        reset_stats(&servers);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = background_reader(proxy.port, stop.clone());
        let mut conn = proxy.connect();
        let started = Instant::now();
        let in_time = || started.elapsed() < Duration::from_secs(120);
        for i in 0..10_000 {
            assert!(in_time(), "{runtime:?}: 10,000 rounds took over 120 s");
            let value = i.to_string();
            assert_eq!(conn.call(&[b"SET", b"k", value.as_bytes()]), status("OK"));
            assert_eq!(conn.call(&[b"GET", b"k"]), bulk(value.as_bytes()), "{runtime:?} round {i}");
        }
        for i in 0..10_000 {
            assert!(in_time(), "{runtime:?}: 10,000 pipelined rounds took over 120 s");
            let value = format!("p{i}");
            let mut batch = encode_command(&[b"SET", b"k", value.as_bytes()]);
            batch.extend(encode_command(&[b"GET", b"k"]));
            conn.send_raw(&batch);
            assert_eq!(conn.read_reply(), status("OK"));
            assert_eq!(conn.read_reply(), bulk(value.as_bytes()), "{runtime:?} pipelined round {i}");
        }
        stop.store(true, Ordering::Relaxed);
        let other_reads = reader.join().expect("reader thread");
        let replica_reads = calls(servers[1].port, "get") + calls(servers[2].port, "get");
        assert!(other_reads > 0);
        assert!(
            replica_reads >= other_reads,
            "{runtime:?}: the other client's {other_reads} reads must go to the replicas (they served {replica_reads})"
        );
    }
}
