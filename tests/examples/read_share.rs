//! Measures what `read_your_writes` costs in `readsToSlaves`: the share of reads that still reach the replicas in
//! a 90 % read workload, with it on and off, and how many reads returned something older than the client's own
//! last write.
//!
//! `cargo run --release -p redis-proxy-tests --example read_share -- [CLIENTS] [OPS] [PIPELINE] [mio|tokio]`
//! (defaults: 8 clients, 10,000 requests each, pipeline 1, mio). Each client, on a connection of its own, sends
//! `PIPELINE` requests at a time: each a `SET` of one of its own 100 keys with probability 0.1, otherwise a `GET`
//! of one of them. A read is stale when it does not return the client's own last write to that key (in request
//! order, as one Redis server would answer). A master and two replicas on 127.0.0.1; needs `redis-server`.

use redis_proxy_tests::cluster::{cluster, ports};
use redis_proxy_tests::{encode_command, info_field, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Keys per client.
const KEYS: u64 = 100;

/// `calls` of `GET` in a server's `INFO commandstats`.
fn gets(port: u16) -> u64 {
    let Some(stats) = info_field(port, "commandstats", "cmdstat_get") else { return 0 };
    stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// What one client saw.
#[derive(Default)]
struct ClientStats {
    reads: u64,
    /// Reads that did not return the value of the client's own last write to that key.
    stale: u64,
}

/// One client's workload: `ops` requests, 10 % writes, `pipeline` at a time, bounded to 120 s.
fn run_client(port: u16, id: usize, ops: usize, pipeline: usize) -> ClientStats {
    let mut conn = RespConn::connect(port);
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (id as u64 + 1);
    let mut next = move || {
        // xorshift64: a fixed, repeatable sequence per client.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut written: HashMap<u64, String> = HashMap::new();
    let mut stats = ClientStats::default();
    let started = Instant::now();
    let mut op = 0;
    while op < ops && started.elapsed() < Duration::from_secs(120) {
        // Each request with the reply a single Redis server would give it, given the client's writes in order.
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..pipeline.min(ops - op) {
            let roll = next();
            let key_number = roll % KEYS;
            let key = format!("c{id}:k{key_number}");
            if (roll >> 32) % 10 == 0 {
                let value = op.to_string();
                batch.extend(encode_command(&[b"SET", key.as_bytes(), value.as_bytes()]));
                written.insert(key_number, value);
                expected.push(None);
            } else {
                batch.extend(encode_command(&[b"GET", key.as_bytes()]));
                expected.push(Some(Reply::Bulk(written.get(&key_number).map(|v| v.as_bytes().to_vec()))));
            }
            op += 1;
        }
        conn.send_raw(&batch);
        for expected in expected {
            let reply = conn.read_reply();
            match expected {
                None => assert_eq!(reply, status("OK")),
                Some(value) => {
                    stats.reads += 1;
                    stats.stale += u64::from(reply != value);
                }
            }
        }
    }
    stats
}

/// Runs the workload through a fresh proxy and prints the share of reads the replicas served, the stale reads and
/// the throughput.
fn measure(
    runtime: Runtime,
    servers: &[RedisServer],
    read_your_writes: bool,
    clients: usize,
    ops: usize,
    pipeline: usize,
) {
    let extra = format!(r#""mode": "readsToSlaves", "check_period": 100, "read_your_writes": {read_your_writes}"#);
    let proxy = Proxy::start(runtime, &ports(servers), &extra);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(servers[0].connect().call(&[b"FLUSHALL"]), status("OK"));
    std::thread::sleep(Duration::from_millis(200));
    for server in servers {
        assert_eq!(server.connect().call(&[b"CONFIG", b"RESETSTAT"]), status("OK"));
    }
    let started = Instant::now();
    let handles: Vec<_> =
        (0..clients).map(|id| std::thread::spawn(move || run_client(proxy.port, id, ops, pipeline))).collect();
    let results: Vec<ClientStats> = handles.into_iter().map(|h| h.join().expect("client thread")).collect();
    let seconds = started.elapsed().as_secs_f64();
    let reads: u64 = results.iter().map(|r| r.reads).sum();
    let stale: u64 = results.iter().map(|r| r.stale).sum();
    let on_replicas: u64 = servers[1..].iter().map(|s| gets(s.port)).sum();
    println!(
        "read_your_writes {:5}: {:5.1} % of {reads} reads served by replicas, {stale} stale reads, {:.0} requests/s",
        read_your_writes,
        100.0 * on_replicas as f64 / reads.max(1) as f64,
        (clients * ops) as f64 / seconds,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clients: usize = args.first().map_or(8, |a| a.parse().expect("CLIENTS is a number"));
    let ops: usize = args.get(1).map_or(10_000, |a| a.parse().expect("OPS is a number"));
    let pipeline: usize = args.get(2).map_or(1, |a| a.parse().expect("PIPELINE is a number")).max(1);
    let runtime = match args.get(3).map(String::as_str) {
        None | Some("mio") => Runtime::Mio,
        Some(other) => Runtime::ALL
            .iter()
            .copied()
            .find(|r| r.binary_name().ends_with(other))
            .unwrap_or_else(|| panic!("unknown runtime {other}")),
    };
    let servers = cluster(2);
    let linked = |s: &RedisServer| info_field(s.port, "replication", "master_link_status").as_deref() == Some("up");
    assert!(wait_until(Duration::from_secs(30), || servers[1..].iter().all(linked)), "replicas did not link");
    println!(
        "{clients} clients x {ops} requests, {pipeline} at a time (90 % GET, 10 % SET of the client's own keys), \
         {runtime:?}"
    );
    for read_your_writes in [false, true] {
        measure(runtime, &servers, read_your_writes, clients, ops, pipeline);
    }
}
