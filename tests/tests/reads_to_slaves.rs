//! Issue 16 end to end: `readsToSlaves` never breaks a `SCAN`-family iteration, and with `read_your_writes` a
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
const ITEMS: usize = 1000;

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

#[test]
fn a_cursor_of_a_replica_that_stopped_serving_reads_is_refused() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        populate(&servers);
        let proxy = proxy(runtime, &servers, "");
        reset_stats(&servers);
        let mut conn = proxy.connect();
        let Reply::Array(Some(reply)) = conn.call(&[b"SCAN", b"0", b"COUNT", b"10"]) else { panic!("SCAN") };
        let Reply::Bulk(Some(cursor)) = &reply[0] else { panic!("cursor") };
        let issuer = if calls(servers[1].port, "scan") == 1 { &servers[1] } else { &servers[2] };
        issuer.signal("STOP");
        // Within about a check period (100 ms) its late probe takes it out of the rotation.
        std::thread::sleep(Duration::from_millis(300));
        let reply = conn.call(&[b"SCAN", cursor, b"COUNT", b"10"]);
        issuer.signal("CONT");
        let expected = format!("issued by 127.0.0.1:{}, which is no longer serving reads", issuer.port);
        assert!(matches!(&reply, Reply::Error(e) if e.contains(&expected)), "{runtime:?}: {reply:?}");
        // A new iteration works at once, on the replica still serving.
        assert!(iterate(&mut conn, "SCAN", None, 100).len() >= ITEMS);
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
