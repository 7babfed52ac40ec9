//! Issue 11, part 2: whatever a client or tool says works through the proxy as it does against Redis: deep replies,
//! replication clients (`redis-cli --rdb`, `--replica`), refusals only where the topology breaks (with EXECABORT
//! inside MULTI), and Redis's own error text where the proxy forwards.

use redis_proxy_tests::{bulk, status, Proxy, RedisServer, Reply, Runtime};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `scenario` against a fresh master and a proxy of every runtime.
fn each_runtime(scenario: impl Fn(&RedisServer, &Proxy)) {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        scenario(&master, &proxy);
    }
}

/// The depth of `reply`'s first-element chain.
fn depth(reply: &Reply) -> usize {
    let mut depth = 0;
    let mut at = reply;
    while let Reply::Array(Some(items)) = at {
        depth += 1;
        match items.first() {
            Some(first) => at = first,
            None => break,
        }
    }
    depth
}

#[test]
fn a_reply_nested_a_thousand_deep_comes_through_and_the_connection_stays() {
    let script: &[u8] =
        b"local t = {} local c = t for i = 1, 1000 do local n = {} c[1] = n c = n end c[1] = 7 return t";
    each_runtime(|master, proxy| {
        let direct = master.connect().call(&[b"EVAL", script, b"0"]);
        assert_eq!(depth(&direct), 1001);
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"EVAL", script, b"0"]), direct);
        assert_eq!(conn.call(&[b"SET", b"after", b"deep"]), status("OK"));
        assert_eq!(conn.call(&[b"GET", b"after"]), bulk(b"deep"));
    });
}

#[test]
fn redis_cli_rdb_saves_the_masters_dataset_through_the_proxy() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"saved-key", b"saved-value"]), status("OK"));
        let file = std::env::temp_dir().join(format!("redis-proxy-rdb-{}-{}.rdb", std::process::id(), proxy.port));
        let output = Command::new("redis-cli")
            .args(["-p", &proxy.port.to_string(), "--rdb"])
            .arg(&file)
            .output()
            .expect("run redis-cli --rdb");
        let rdb = std::fs::read(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        assert!(output.status.success(), "redis-cli --rdb failed: {}", String::from_utf8_lossy(&output.stderr));
        assert!(rdb.starts_with(b"REDIS"), "an RDB file");
        assert!(rdb.windows(9).any(|w| w == b"saved-key"), "holding the key set through the proxy");
        // The proxy goes on as before.
        assert_eq!(conn.call(&[b"GET", b"saved-key"]), bulk(b"saved-value"));
    });
}

#[test]
fn redis_cli_replica_streams_writes_made_through_the_proxy_and_is_no_managed_replica() {
    for &runtime in Runtime::ALL {
        // Without the 5 s default delay before a diskless sync starts.
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let proxy = Proxy::start(runtime, &[master.port], "");
        let mut replica = Command::new("redis-cli")
            .args(["-p", &proxy.port.to_string(), "--replica"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli --replica");
        // It reports the sync on stderr and prints the commands it receives on stdout.
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let stdout = replica.stdout.take().expect("piped stdout");
        let stderr = replica.stderr.take().expect("piped stderr");
        let readers: [Box<dyn std::io::Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
        for reader in readers {
            let lines_tx = lines_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    if lines_tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let mut seen = String::new();
        let mut wait_for = |needle: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !seen.contains(needle) {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) => seen.push_str(&(line + "\n")),
                    Err(_) => return false,
                }
            }
            true
        };
        assert!(wait_for("SYNC done"), "the sync completes");
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"streamed-key", b"streamed-value"]), status("OK"));
        let streamed = wait_for("streamed-value");
        // WAIT is answered from the replicas the proxy manages: there are none, whatever is attached to the master.
        let waited = conn.call(&[b"WAIT", b"1", b"200"]);
        let _ = replica.kill();
        let _ = replica.wait();
        assert!(streamed, "the write reaches the replication client; it printed:\n{seen}");
        assert_eq!(waited, Reply::Int(0));
        assert_eq!(conn.call(&[b"GET", b"streamed-key"]), bulk(b"streamed-value"));
    }
}

#[test]
fn replication_settings_pass_and_topology_changes_are_refused_with_what_to_do_instead() {
    each_runtime(|master, proxy| {
        let mut conn = proxy.connect();
        for (name, value) in [
            ("min-replicas-to-write", "0"),
            ("min-replicas-max-lag", "10"),
            ("replica-priority", "50"),
            ("replica-read-only", "yes"),
            ("masterauth", "secret"),
            ("masteruser", "default"),
        ] {
            assert_eq!(
                conn.call(&[b"CONFIG", b"SET", name.as_bytes(), value.as_bytes()]),
                status("OK"),
                "CONFIG SET {name}"
            );
        }
        assert_eq!(
            master.connect().call(&[b"CONFIG", b"GET", b"replica-priority"]),
            Reply::Array(Some(vec![bulk(b"replica-priority"), bulk(b"50")]))
        );
        // DEBUG passes (here the server's enable-debug-command decides) except what stops the server.
        assert_eq!(conn.call(&[b"DEBUG", b"SLEEP", b"0"]), master.connect().call(&[b"DEBUG", b"SLEEP", b"0"]));
        for refused in [
            &[&b"REPLICAOF"[..], b"NO", b"ONE"][..],
            &[b"SLAVEOF", b"127.0.0.1", b"1"],
            &[b"FAILOVER"],
            &[b"CLUSTER", b"INFO"],
            &[b"SHUTDOWN"],
            &[b"DEBUG", b"RESTART"],
            &[b"CONFIG", b"SET", b"port", b"1"],
            &[b"CONFIG", b"SET", b"requirepass", b"x"],
        ] {
            let Reply::Error(message) = conn.call(refused) else { panic!("{refused:?} is refused") };
            assert!(message.starts_with("ERR redis-proxy refuses "), "{message}");
            let instead = message.split_once(": ").map_or("", |(_, rest)| rest);
            assert!(instead.len() > 30, "the refusal says what to do instead: {message}");
        }
        assert_eq!(master.connect().call(&[b"PING"]), status("PONG"), "the master still runs");
    });
}

#[test]
fn a_refused_command_inside_multi_fails_exec_with_execabort_as_redis_does() {
    each_runtime(|master, proxy| {
        // Redis's own behaviour for a command rejected while queuing, for comparison.
        let mut direct = master.connect();
        direct.call(&[b"MULTI"]);
        direct.call(&[b"NO-SUCH-COMMAND"]);
        let redis_abort = direct.call(&[b"EXEC"]);
        assert!(matches!(&redis_abort, Reply::Error(e) if e.starts_with("EXECABORT")));

        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"MULTI"]), status("OK"));
        assert_eq!(conn.call(&[b"SET", b"in-aborted-multi", b"1"]), status("QUEUED"));
        assert!(matches!(conn.call(&[b"REPLICAOF", b"NO", b"ONE"]), Reply::Error(_)));
        assert_eq!(conn.call(&[b"EXEC"]), redis_abort);
        assert_eq!(conn.call(&[b"GET", b"in-aborted-multi"]), Reply::Bulk(None), "nothing of it ran");
        // The connection is clean afterwards: a new transaction runs.
        assert_eq!(conn.call(&[b"MULTI"]), status("OK"));
        assert_eq!(conn.call(&[b"SET", b"in-next-multi", b"1"]), status("QUEUED"));
        assert_eq!(conn.call(&[b"EXEC"]), Reply::Array(Some(vec![status("OK")])));
    });
}

#[test]
fn errors_redis_gives_come_through_in_its_own_words() {
    each_runtime(|master, proxy| {
        let mut direct = master.connect();
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"a-string", b"v"]), status("OK"));
        for request in [
            &[&b"GET"[..]][..],
            &[b"NO-SUCH-COMMAND", b"x"],
            &[b"LPUSH", b"a-string", b"x"],
            &[b"REPLICAOF"],
            &[b"SUBSCRIBE"],
            &[b"MULTI", b"extra"],
            &[b"SELECT"],
            &[b"RESET", b"extra"],
            &[b"CONFIG", b"SET", b"port"],
            &[b"CLIENT", b"NO-SUCH-SUBCOMMAND"],
            &[b"WAIT", b"x", b"0"],
        ] {
            let from_redis = direct.call(request);
            assert!(matches!(from_redis, Reply::Error(_)), "{request:?} is an error in Redis");
            assert_eq!(conn.call(request), from_redis, "{request:?}");
        }
    });
}
