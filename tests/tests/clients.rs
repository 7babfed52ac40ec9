//! Issue 11, part 3: the client libraries and tools people use, through both runtimes. The Python and Node scripts
//! in `tests/clients` assert their own results; a missing library is a failure that says how to install it
//! (`.ci/run` installs them), never a skip.

use redis_proxy_tests::cluster::{cluster, converged_master, ports, CONVERGE};
use redis_proxy_tests::{bulk, status, wait_until, Proxy, RedisServer, Reply, Runtime};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `tests/clients` in the source tree.
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Runs a checker script and asserts it passed, showing its output (and the install hint it prints) if not.
fn run_checker(program: &str, args: &[&str]) -> String {
    let output: Output = Command::new(program)
        .args(args)
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed? .ci/run installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

#[test]
fn redis_py_sync_and_asyncio_in_resp2_and_resp3() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        let port = proxy.port.to_string();
        for protocol in ["2", "3"] {
            let out = run_checker("python3", &["py/check.py", &port, protocol]);
            eprintln!("{runtime:?}: {}", out.trim());
        }
    }
}

#[test]
fn ioredis_with_auto_pipelining_and_node_redis() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        let out = run_checker("node", &["node/check.js", &proxy.port.to_string()]);
        eprintln!("{runtime:?}: {}", out.trim());
    }
}

/// Runs `redis-cli -p <port>` with `args` and `stdin`, asserting success; returns stdout.
fn redis_cli(port: u16, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write redis-cli stdin");
    let output = child.wait_with_output().expect("redis-cli output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "redis-cli {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn redis_cli_pipe_scan_bigkeys_and_monitor() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        // --pipe: raw protocol in, a summary out.
        let mut input = Vec::new();
        for i in 0..1000 {
            let (key, value) = (format!("piped:{i}"), i.to_string());
            input.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len()).as_bytes(),
            );
        }
        let summary = redis_cli(proxy.port, &["--pipe"], &input);
        assert!(summary.contains("errors: 0, replies: 1000"), "{summary}");
        // --scan sees every key.
        let scanned = redis_cli(proxy.port, &["--scan", "--pattern", "piped:*"], b"");
        assert_eq!(scanned.lines().count(), 1000, "--scan");
        // --bigkeys names the biggest list.
        let mut conn = proxy.connect();
        let items: Vec<Vec<u8>> = (0..50).map(|i| i.to_string().into_bytes()).collect();
        let mut rpush: Vec<&[u8]> = vec![b"RPUSH", b"the-big-list"];
        rpush.extend(items.iter().map(Vec::as_slice));
        assert_eq!(conn.call(&rpush), Reply::Int(50));
        let bigkeys = redis_cli(proxy.port, &["--bigkeys"], b"");
        assert!(bigkeys.contains("Biggest   list found '\"the-big-list\"' has 50 items"), "{bigkeys}");

        // MONITOR through the proxy shows a command another client sends.
        let mut monitor = Command::new("redis-cli")
            .args(["-p", &proxy.port.to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-cli MONITOR");
        let mut lines = BufReader::new(monitor.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("OK"));
        let writer = std::thread::spawn({
            let port = proxy.port;
            move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut conn = redis_proxy_tests::RespConn::connect(port);
                while Instant::now() < deadline {
                    conn.call(&[b"SET", b"monitored-key", b"1"]);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        let seen = lines.map_while(Result::ok).find(|line| line.contains("monitored-key"));
        let _ = monitor.kill();
        let _ = monitor.wait();
        writer.join().expect("writer");
        assert!(seen.is_some_and(|l| l.contains("\"SET\"")), "MONITOR shows the SET");
        assert_eq!(conn.call(&[b"GET", b"piped:999"]), bulk(b"999"));
    }
}

#[test]
fn fifty_redis_py_resp3_clients_share_the_pool_and_stay_connected_through_a_failover() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(1);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, r#""check_period": 100, "pool_size": 4"#);
        let mut checker = Command::new("python3")
            .args(["py/pool_check.py", &proxy.port.to_string(), "50"])
            .current_dir(clients_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3 (is it installed? .ci/run installs it)");
        let mut out = BufReader::new(checker.stdout.take().expect("stdout")).lines();
        let ready = out.next().and_then(Result::ok);
        if ready.as_deref() != Some("ready") {
            let output = checker.wait_with_output().expect("checker output");
            panic!("pool_check.py did not get ready: {ready:?}\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let (connections, resp3) = redis_proxy_tests::proxy_connections(all[0]);
        eprintln!(
            "{runtime:?}: 50 redis-py RESP3 clients -> {connections} proxy connections on the master, {resp3} RESP3"
        );
        // At most pool_size (4) RESP3 shared connections, plus the probe; no private connection.
        assert!(resp3 <= 4 && connections <= 5, "{connections} connections, {resp3} RESP3");

        servers[0].kill();
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()), "the replica was not promoted");
        writeln!(checker.stdin.as_mut().expect("stdin")).expect("tell the checker to go on");
        let output = checker.wait_with_output().expect("checker output");
        let summary: Vec<String> = out.map_while(Result::ok).collect();
        assert!(
            output.status.success(),
            "pool_check.py after the failover: {summary:?}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{runtime:?}: after the failover: {summary:?}");
        assert!(summary.iter().any(|l| l.starts_with("kept 50")), "{summary:?}");
        assert_eq!(redis_proxy_tests::RespConn::connect(proxy.port).call(&[b"SET", b"after", b"1"]), status("OK"));
    }
}
