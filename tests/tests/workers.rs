//! Worker threads (`workers`), end to end, on both runtimes: a deciding thread and four workers in front of a
//! master and two replicas. Clients spread over the workers and are counted as one proxy's; a SIGKILL of the master
//! is failed over once; a planned switchover under a write load from every worker loses no acknowledged write and
//! gives no error. More than 64 workers are refused. (Sentinel and cluster mode with workers: CI runs their suites
//! with `REDIS_PROXY_TEST_WORKERS=2`.)

use redis_proxy_tests::cluster::{cluster, converged_master, ports, wait_caught_up, CONVERGE};
use redis_proxy_tests::{
    binary, exclusive, free_port, http_get, scratch_dir, wait_until, Proxy, Reply, RespConn, Runtime,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Client threads: more than the workers, so every worker gets some.
const CLIENTS: usize = 8;

/// What one client thread saw: its `INCR`s acknowledged, and its errors (error replies or broken connections).
#[derive(Debug, Default)]
struct Counted {
    acked: i64,
    errors: usize,
    /// Acknowledged after the moment `Load::mark` was called.
    acked_after_mark: i64,
}

/// `CLIENTS` threads, each incrementing its own counter key (`PREFIX:N`) through its own connection until stopped.
/// With `exact`, every reply must count one more than the last: no increment lost or run twice (a planned
/// switchover). Without, a failed increment may have run, and a crashed master may take acknowledged ones with it
/// (Redis's asynchronous replication).
struct Load {
    stop: Arc<AtomicBool>,
    mark: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Counted>>,
}

impl Load {
    fn start(port: u16, prefix: &str, exact: bool) -> Load {
        let (stop, mark) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let threads = (0..CLIENTS)
            .map(|client| {
                let (stop, mark, key) = (stop.clone(), mark.clone(), format!("{prefix}:{client}"));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut counted = Counted::default();
                    let mut conn: Option<RespConn> = None;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                        if conn.is_none() {
                            conn = RespConn::try_connect(port, Duration::from_secs(5)).ok();
                        }
                        let Some(c) = conn.as_mut() else { continue };
                        match c.try_call(&[b"INCR", key.as_bytes()]) {
                            Ok(Reply::Int(n)) => {
                                counted.acked += 1;
                                counted.acked_after_mark += i64::from(mark.load(Ordering::Relaxed));
                                assert!(!exact || n == counted.acked, "{key}: {n} after {} increments", counted.acked);
                            }
                            Ok(_) => counted.errors += 1,
                            Err(_) => {
                                counted.errors += 1;
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    counted
                })
            })
            .collect();
        Load { stop, mark, threads }
    }

    /// From now on, acknowledged writes count as after the mark.
    fn mark(&self) {
        self.mark.store(true, Ordering::Relaxed);
    }

    fn finish(self) -> Vec<Counted> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("a client thread")).collect()
    }
}

/// The number of threads of process `pid`.
/// The threads of process `pid` named `worker-N` (tokio's blocking pool, for name lookups, has threads of its own).
fn workers_of(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let names = tasks.flatten().filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok());
    names.filter(|name| name.starts_with("worker-")).count()
}

/// A number field of `/status.json` (`"name": 12`), the first one named so.
fn json_number(json: &str, name: &str) -> Option<u64> {
    let at = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    json[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn four_workers_of_redis_proxy_serve_as_one_proxy_fail_over_once_and_switch_over_without_losing_a_write() {
    four_workers_serve_as_one_proxy_fail_over_once_and_switch_over_without_losing_a_write(Runtime::Mio);
}

#[test]
fn four_workers_of_redis_proxy_tokio_serve_as_one_proxy_fail_over_once_and_switch_over_without_losing_a_write() {
    four_workers_serve_as_one_proxy_fail_over_once_and_switch_over_without_losing_a_write(Runtime::Tokio);
}

fn four_workers_serve_as_one_proxy_fail_over_once_and_switch_over_without_losing_a_write(runtime: Runtime) {
    let _serial = exclusive();
    let mut servers = cluster(2);
    let all = ports(&servers);
    let (status_port, admin_port) = (free_port(), free_port());
    let extra = format!(
        r#""workers": 4, "check_period": 100, "status_listen": "127.0.0.1:{status_port}",
           "admin_listen": "127.0.0.1:{admin_port}""#
    );
    let proxy = Proxy::start(runtime, &all, &extra);
    assert_eq!(workers_of(proxy.pid()), 4, "4 worker threads beside the deciding one:\n{}", proxy.log());
    wait_caught_up(&servers[0]);
    assert!(wait_until(CONVERGE, || http_get(status_port, "/health").is_some_and(|(c, _)| c == 200)));

    // Clients spread over the workers, counted as one proxy's.
    let load = Load::start(proxy.port, "before", false);
    let counted_together = wait_until(CONVERGE, || {
        let json = http_get(status_port, "/status.json").map(|(_, body)| body).unwrap_or_default();
        json_number(&json, "clients").is_some_and(|c| c >= CLIENTS as u64)
    });
    assert!(counted_together, "the status page does not count every worker's clients:\n{}", proxy.log());
    std::thread::sleep(Duration::from_millis(500));

    // A SIGKILL of the master: one promotion, and every client writes again.
    servers[0].kill();
    load.mark();
    std::thread::sleep(Duration::from_millis(1500));
    let counted = load.finish();
    for (client, c) in counted.iter().enumerate() {
        assert!(c.acked_after_mark > 0, "client {client} wrote nothing after the failover: {c:?}\n{}", proxy.log());
        assert!(c.errors <= 2, "client {client}: more errors than its requests in flight: {c:?}");
    }
    let promotions = proxy.log().matches("sent REPLICAOF NO ONE").count();
    assert_eq!(promotions, 1, "one decision, one promotion:\n{}", proxy.log());
    let new_master = converged_master(&all[1..]).expect("a replica was promoted and the other follows it");
    let json = http_get(status_port, "/status.json").expect("status").1;
    let acked: i64 = counted.iter().map(|c| c.acked).sum();
    let writes = json.find("\"master\":{").and_then(|at| json_number(&json[at..], "write")).unwrap_or(0);
    assert!(writes >= acked as u64, "the workers' writes are counted ({writes} < {acked}): {json}");

    // A planned switchover under a write load from every worker: no error, no acknowledged write lost.
    let other = *all[1..].iter().find(|p| **p != new_master).expect("the other replica");
    assert!(wait_until(CONVERGE, || {
        redis_proxy_tests::info_field(other, "replication", "master_link_status").as_deref() == Some("up")
    }));
    std::thread::sleep(Duration::from_millis(300));
    let load = Load::start(proxy.port, "switch", true);
    std::thread::sleep(Duration::from_millis(500));
    let mut admin = RespConn::connect(admin_port);
    let target = format!("127.0.0.1:{other}");
    let reply = admin.call(&[b"PROXY", b"FAILOVER", target.as_bytes()]);
    std::thread::sleep(Duration::from_millis(500));
    let counted = load.finish();
    assert!(matches!(&reply, Reply::Status(text) if text.starts_with("OK")), "PROXY FAILOVER: {reply:?}");
    assert!(wait_until(CONVERGE, || converged_master(&all[1..]) == Some(other)), "{target} is not the master");
    let mut switched = RespConn::connect(other);
    for (client, c) in counted.iter().enumerate() {
        assert_eq!(c.errors, 0, "client {client}: errors during the switchover: {c:?}");
        let key = format!("switch:{client}");
        let held = switched.call(&[b"GET", key.as_bytes()]);
        assert_eq!(
            held,
            Reply::Bulk(Some(c.acked.to_string().into_bytes())),
            "client {client}: acknowledged writes lost"
        );
    }
}

#[test]
fn too_many_workers_are_refused_with_a_clear_error() {
    let dir = scratch_dir("workers-refused");
    let run = |name: &str, config: &str| {
        let path = dir.join(name);
        std::fs::write(&path, config).expect("write the config");
        let output = std::process::Command::new(binary(Runtime::Mio)).arg("--check").arg(&path).output();
        let output = output.expect("run the proxy");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let port = free_port();
    let servers = format!(r#"{{"servers": [{{"port": 1}}], "listen_port": {port}, "workers": 2}}"#);
    let (code, stderr) = run("many.json", &servers.replace("\"workers\": 2", "\"workers\": 65"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`workers`: at most 64"), "{stderr}");
}
