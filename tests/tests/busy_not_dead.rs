//! Telling busy from dead (DESIGN.md): a master that is alive but busy (a long script, `DEBUG SLEEP`,
//! `CLIENT PAUSE`, `SIGSTOP`) is not failed over before `busy_down_after`; a master whose process is gone is
//! failed over at once; `SCRIPT KILL` reaches a busy server; `WAIT` counts only the client's own writes and blocks
//! no other client. A master with two replicas behind the proxy, on both runtimes.

use redis_proxy_tests::cluster::{converged_master, ports, start_write_load, synced_cluster, wait_caught_up};
use redis_proxy_tests::{bulk, replication_role, status, wait_until, Proxy, Reply, RespConn, Runtime};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FAST: &str = r#""check_period": 100"#;
const CONVERGE: Duration = redis_proxy_tests::cluster::CONVERGE;
/// Servers that accept `DEBUG` from local connections (the proxy's).
const DEBUG_ARGS: &[&str] = &["--enable-debug-command", "local"];
/// A Lua script that spins on `TIME` for ARGV[1] ms, then returns "done".
const SPIN: &str = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
    while true do local n = redis.call('TIME') \
    if n[1] * 1000000 + n[2] - s >= tonumber(ARGV[1]) * 1000 then return 'done' end end";

/// A connection to the proxy whose reads wait up to 30 s (longer than any busy period here).
fn patient(proxy: &Proxy) -> RespConn {
    RespConn::try_connect(proxy.port, Duration::from_secs(30)).expect("connect to the proxy")
}

/// Runs one command on its own proxy connection in a thread; returns its reply and when it came.
fn call_in_thread(proxy: &Proxy, args: &[&str]) -> JoinHandle<(Reply, Instant)> {
    let mut conn = patient(proxy);
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    std::thread::spawn(move || {
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = conn.try_call(&args).unwrap_or_else(|e| Reply::Error(format!("(connection: {e})")));
        (reply, Instant::now())
    })
}

/// Samples the replicas' roles every 100 ms while `busy` runs: any sample where a replica is not a replica of
/// `master` is returned (a failover while the master was only busy).
fn watch_replicas(master: u16, replicas: &[u16], busy: impl FnOnce()) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let replicas = replicas.to_vec();
    let sampler = std::thread::spawn(move || {
        let mut wrong = Vec::new();
        let started = Instant::now();
        while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            for port in &replicas {
                let role = replication_role(*port);
                if role.as_ref().is_some_and(|r| *r != ("slave".to_string(), Some(master))) {
                    wrong.push(format!("at {:?}: {port} reports {role:?}", started.elapsed()));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        wrong
    });
    busy();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("role sampler")
}

/// Asserts that the proxy made no failover: `all[0]` is still the master every server follows, and the log shows
/// no promotion and no `REPLICAOF`.
fn assert_no_failover(proxy: &Proxy, all: &[u16], wrong_roles: &[String], what: &str) {
    assert!(wrong_roles.is_empty(), "{what}: a replica changed role while the master was busy: {wrong_roles:?}");
    let settled = wait_until(Duration::from_secs(5), || converged_master(all) == Some(all[0]));
    let roles: Vec<_> = all.iter().map(|p| replication_role(*p)).collect();
    assert!(settled, "{what}: the master changed; roles {roles:?}; proxy log:\n{}", proxy.log());
    let log = proxy.log();
    assert!(!log.contains("promoting"), "{what}: the proxy promoted a replica; its log:\n{log}");
    assert!(!log.contains("sent REPLICAOF"), "{what}: the proxy sent REPLICAOF; its log:\n{log}");
}

/// Reads `GET key` through the proxy every 50 ms for `run`, each on the same connection; returns each reply with
/// the times it was sent and answered.
fn get_loop(proxy: &Proxy, key: &'static str, run: Duration) -> JoinHandle<Vec<(Instant, Instant, Reply)>> {
    let mut conn = patient(proxy);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut seen = Vec::new();
        while started.elapsed() < run && seen.len() < 1000 {
            let sent = Instant::now();
            let reply = conn.try_call(&[b"GET", key.as_bytes()]).unwrap_or_else(|e| Reply::Error(format!("(io: {e})")));
            seen.push((sent, Instant::now(), reply));
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

#[test]
fn a_long_script_on_the_master_is_not_a_failover() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        assert_eq!(proxy.connect().call(&[b"SET", b"k", b"v"]), status("OK"));

        let started = Instant::now();
        let script = call_in_thread(&proxy, &["EVAL", SPIN, "0", "6000"]);
        std::thread::sleep(Duration::from_millis(200));
        let gets = get_loop(&proxy, "k", Duration::from_millis(7500));
        let mut eval = None;
        let wrong = watch_replicas(all[0], &all[1..], || eval = Some(script.join().expect("script thread")));
        let (eval_reply, eval_done) = eval.expect("script ran");
        let gets = gets.join().expect("get thread");

        assert_eq!(eval_reply, bulk(b"done"), "{runtime:?}: the script's real reply; log:\n{}", proxy.log());
        assert!(eval_done - started >= Duration::from_millis(5900), "{runtime:?}: the script ended early");
        // Every GET gets Redis's own answer: the value, or Redis's -BUSY (after its busy-reply threshold) when
        // it went on another connection than the script; never a proxy error or a dropped connection.
        for (_, _, reply) in &gets {
            let real = *reply == bulk(b"v") || matches!(reply, Reply::Error(e) if e.starts_with("BUSY"));
            assert!(real, "{runtime:?}: a GET during the script got {reply:?}; proxy log:\n{}", proxy.log());
        }
        let during: Vec<_> = gets.iter().filter(|(sent, _, _)| *sent < eval_done).collect();
        assert!(!during.is_empty(), "{runtime:?}: no GET was sent while the script ran");
        for (_, answered, reply) in &during {
            if *reply == bulk(b"v") {
                assert!(*answered >= eval_done - Duration::from_millis(100), "a GET was served during the script");
            }
        }
        let after = gets.iter().filter(|(sent, _, _)| *sent > eval_done);
        assert!(after.clone().count() > 0 && after.clone().all(|(_, _, r)| *r == bulk(b"v")), "GETs after: {gets:?}");
        assert_no_failover(&proxy, &all, &wrong, &format!("{runtime:?}: 6 s script"));
    }
}

#[test]
fn script_kill_from_another_client_reaches_a_busy_master() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        assert_eq!(proxy.connect().call(&[b"SET", b"k", b"v"]), status("OK"));

        let script = call_in_thread(&proxy, &["EVAL", "while true do end", "0"]);
        let mut kill = None;
        let wrong = watch_replicas(all[0], &all[1..], || {
            std::thread::sleep(Duration::from_millis(1500));
            // Redis answers other clients only after its busy-reply threshold (5 s): the kill waits until then.
            kill = Some(patient(&proxy).try_call(&[b"SCRIPT", b"KILL"]).map_err(|e| e.to_string()));
            std::thread::sleep(Duration::from_millis(300));
        });
        let kill = kill.expect("kill sent");
        assert_eq!(kill, Ok(status("OK")), "{runtime:?}: SCRIPT KILL; proxy log:\n{}", proxy.log());
        let (reply, _) = script.join().expect("script thread");
        assert!(
            matches!(&reply, Reply::Error(e) if e.starts_with("ERR") && e.contains("Script killed by user")),
            "{runtime:?}: the script's client got {reply:?}; proxy log:\n{}",
            proxy.log()
        );
        assert_eq!(proxy.connect().call(&[b"GET", b"k"]), bulk(b"v"));
        assert_no_failover(&proxy, &all, &wrong, &format!("{runtime:?}: SCRIPT KILL"));
    }
}

#[test]
fn debug_sleep_and_client_pause_are_not_a_failover() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, DEBUG_ARGS);
        let all = ports(&servers);
        // The proxy passes DEBUG SLEEP (it refuses only the DEBUG subcommands that stop the server).
        let proxy = Proxy::start(runtime, &all, r#""check_period": 100"#);
        assert_eq!(proxy.connect().call(&[b"SET", b"k", b"v"]), status("OK"));

        // DEBUG SLEEP 8: the whole server stops answering for 8 s.
        let started = Instant::now();
        let sleep = call_in_thread(&proxy, &["DEBUG", "SLEEP", "8"]);
        let mut results = None;
        let wrong = watch_replicas(all[0], &all[1..], || {
            std::thread::sleep(Duration::from_millis(500));
            let get = patient(&proxy).try_call(&[b"GET", b"k"]).map_err(|e| e.to_string());
            results = Some((sleep.join().expect("sleep thread"), get, started.elapsed()));
        });
        let ((sleep_reply, slept_until), get, get_done) = results.expect("ran");
        assert_eq!(sleep_reply, status("OK"), "{runtime:?}: DEBUG SLEEP's reply; log:\n{}", proxy.log());
        assert!(slept_until - started >= Duration::from_millis(7900), "{runtime:?}: DEBUG SLEEP ended early");
        assert_eq!(get, Ok(bulk(b"v")), "{runtime:?}: the GET during DEBUG SLEEP; log:\n{}", proxy.log());
        assert!(get_done >= Duration::from_millis(7900), "{runtime:?}: GET answered at {get_done:?}");
        assert_no_failover(&proxy, &all, &wrong, &format!("{runtime:?}: DEBUG SLEEP 8"));

        // CLIENT PAUSE 8000: answers at once, then every client's commands wait 8 s.
        let mut conn = patient(&proxy);
        let started = Instant::now();
        assert_eq!(conn.call(&[b"CLIENT", b"PAUSE", b"8000"]), status("OK"));
        let mut results = None;
        let wrong = watch_replicas(all[0], &all[1..], || {
            std::thread::sleep(Duration::from_millis(500));
            let set = patient(&proxy).try_call(&[b"SET", b"k", b"w"]).map_err(|e| e.to_string());
            results = Some((set, started.elapsed()));
        });
        let (set, set_done) = results.expect("ran");
        assert_eq!(set, Ok(status("OK")), "{runtime:?}: the SET during CLIENT PAUSE; log:\n{}", proxy.log());
        assert!(set_done >= Duration::from_millis(7500), "{runtime:?}: SET answered at {set_done:?}");
        assert_eq!(conn.call(&[b"GET", b"k"]), bulk(b"w"));
        assert_no_failover(&proxy, &all, &wrong, &format!("{runtime:?}: CLIENT PAUSE 8000"));
    }
}

#[test]
fn a_sigstop_shorter_than_busy_down_after_is_not_a_failover() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        let load = start_write_load(proxy.port);
        std::thread::sleep(Duration::from_millis(300));
        let wrong = watch_replicas(all[0], &all[1..], || {
            servers[0].signal("STOP");
            std::thread::sleep(Duration::from_secs(3));
            servers[0].signal("CONT");
            std::thread::sleep(Duration::from_millis(500));
        });
        let stats = load.finish();
        eprintln!("{runtime:?}: 3 s SIGSTOP, busy_down_after default: {stats:?}");
        // The writes in flight during the stop got their real reply once the master woke.
        assert_eq!(stats.errors, 0, "{runtime:?}: writes failed: {stats:?}; proxy log:\n{}", proxy.log());
        assert!(stats.longest_gap < Duration::from_secs(5), "{runtime:?}: {stats:?}");
        assert_no_failover(&proxy, &all, &wrong, &format!("{runtime:?}: 3 s SIGSTOP"));
    }
}

/// Writes `SET w:<i> <i>` through the proxy one at a time until stopped (or 60 s); returns the indices
/// acknowledged with +OK and the other replies.
fn acked_writer(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<(Vec<u64>, Vec<String>)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let (mut acked, mut other) = (Vec::new(), Vec::new());
        let mut conn: Option<RespConn> = None;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            if conn.is_none() {
                conn = RespConn::try_connect(port, Duration::from_secs(30)).ok();
            }
            if let Some(c) = conn.as_mut() {
                let (key, value) = (format!("w:{seq}"), seq.to_string());
                match c.try_call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
                    Ok(reply) if reply == status("OK") => acked.push(seq),
                    Ok(reply) => other.push(format!("{reply:?}")),
                    Err(e) => {
                        other.push(format!("io: {e}"));
                        conn = None;
                    }
                }
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (acked, other)
    })
}

#[test]
fn a_sigstop_longer_than_busy_down_after_fails_over_and_the_old_master_is_re_pointed_first() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, r#""check_period": 100, "busy_down_after": 4000"#);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = acked_writer(proxy.port, stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        // Replication is asynchronous: what the master acknowledged but had not streamed yet when it stops is lost
        // with it, whatever the proxy does. This test is about the proxy, so the stop waits for the replicas.
        wait_caught_up(&servers[0]);

        servers[0].signal("STOP");
        let stopped = Instant::now();
        let promoted = wait_until(CONVERGE, || {
            all[1..].iter().any(|p| replication_role(*p).is_some_and(|(role, _)| role == "master"))
        });
        let promoted_after = stopped.elapsed();
        assert!(promoted, "{runtime:?}: no failover after a long SIGSTOP; log:\n{}", proxy.log());
        assert!(
            promoted_after >= Duration::from_millis(3500),
            "{runtime:?}: promoted {promoted_after:?} after the SIGSTOP, before busy_down_after (4 s)"
        );
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()), "replicas did not converge");
        let new_master = converged_master(&all[1..]).unwrap();
        std::thread::sleep(Duration::from_millis(500));

        servers[0].signal("CONT");
        let rejoined = wait_until(CONVERGE, || replication_role(all[0]) == Some(("slave".into(), Some(new_master))));
        assert!(rejoined, "{runtime:?}: the woken master was not re-pointed; log:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        let (acked, other) = writer.join().expect("writer");
        eprintln!(
            "{runtime:?}: SIGSTOP > busy_down_after: promoted after {promoted_after:?}; {} writes acked, other \
             replies {other:?}",
            acked.len()
        );
        assert!(wait_until(CONVERGE, || converged_master(&all) == Some(new_master)), "did not converge");
        // No acknowledged write landed on the old master only: each is on the new master.
        let mut direct = RespConn::connect(new_master);
        let lost: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|i| direct.call(&[b"GET", format!("w:{i}").as_bytes()]) != bulk(i.to_string().as_bytes()))
            .collect();
        assert!(lost.is_empty(), "{runtime:?}: acknowledged writes lost: {lost:?}; log:\n{}", proxy.log());
        let log = proxy.log();
        let old = format!("127.0.0.1:{}", all[0]);
        assert!(
            log.lines().any(|l| l.contains("sent REPLICAOF 127.0.0.1")
                && l.contains(&old)
                && l.contains("it reports role master beside the master")),
            "{runtime:?}: no REPLICAOF to the old master, with its reason, in the log:\n{log}"
        );
        // Once synchronised, the old master holds exactly the new master's data.
        let (mut to_new, mut to_old) = (RespConn::connect(new_master), RespConn::connect(all[0]));
        let same = wait_until(CONVERGE, || to_new.call(&[b"DBSIZE"]) == to_old.call(&[b"DBSIZE"]));
        assert!(same, "{runtime:?}: the old master's keyspace differs from the new master's");
    }
}

/// Sends `WAIT 1 100` on `conn` and asserts it answers 0 in about the timeout.
fn assert_wait_zero(conn: &mut RespConn, what: &str, proxy: &Proxy) {
    let started = Instant::now();
    let reply = conn.call(&[b"WAIT", b"1", b"100"]);
    let took = started.elapsed();
    assert_eq!(reply, Reply::Int(0), "{what}: WAIT counted replicas that acknowledged nothing; log:\n{}", proxy.log());
    assert!(took >= Duration::from_millis(90) && took < Duration::from_secs(1), "{what}: WAIT 1 100 took {took:?}");
}

#[test]
fn wait_counts_only_the_clients_own_writes_and_blocks_no_one_else() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, FAST);
        let mut shared = proxy.connect();
        assert_eq!(shared.call(&[b"SET", b"a", b"1"]), status("OK"));

        servers[1].signal("STOP");
        servers[2].signal("STOP");
        // Pipelined and one at a time: neither may count replicas that acknowledged nothing.
        let mut pipelined = proxy.connect();
        let mut both = redis_proxy_tests::encode_command(&[b"SET", b"a", b"2"]);
        both.extend(redis_proxy_tests::encode_command(&[b"WAIT", b"1", b"100"]));
        pipelined.send_raw(&both);
        assert_eq!(pipelined.read_reply(), status("OK"));
        let reply = pipelined.read_reply();
        assert_eq!(reply, Reply::Int(0), "{runtime:?}: pipelined SET + WAIT 1 100 with the replicas stopped");
        assert_eq!(shared.call(&[b"SET", b"a", b"2"]), status("OK"));
        assert_wait_zero(&mut shared, &format!("{runtime:?}: shared connection"), &proxy);

        let mut selected = proxy.connect();
        assert_eq!(selected.call(&[b"SELECT", b"1"]), status("OK"));
        assert_eq!(selected.call(&[b"SET", b"b", b"1"]), status("OK"));
        assert_wait_zero(&mut selected, &format!("{runtime:?}: after SELECT 1"), &proxy);

        let mut multi = proxy.connect();
        assert_eq!(multi.call(&[b"MULTI"]), status("OK"));
        assert_eq!(multi.call(&[b"SET", b"c", b"1"]), status("QUEUED"));
        assert_eq!(multi.call(&[b"EXEC"]), Reply::Array(Some(vec![status("OK")])));
        assert_wait_zero(&mut multi, &format!("{runtime:?}: after MULTI/EXEC"), &proxy);

        // A long WAIT by one client does not hold up another client's reads.
        let mut waiter = RespConn::try_connect(proxy.port, Duration::from_secs(15)).expect("connect");
        assert_eq!(waiter.call(&[b"SET", b"d", b"1"]), status("OK"));
        let wait_sent = Instant::now();
        waiter.send(&[b"WAIT", b"1", b"5000"]);
        std::thread::sleep(Duration::from_millis(100));
        let mut reader = RespConn::try_connect(proxy.port, Duration::from_secs(10)).expect("connect");
        for _ in 0..5 {
            let started = Instant::now();
            let reply = reader.call(&[b"GET", b"a"]);
            let took = started.elapsed();
            assert_eq!(reply, bulk(b"2"), "{runtime:?}: GET during another client's WAIT");
            assert!(took < Duration::from_secs(1), "{runtime:?}: a GET waited {took:?} behind another's WAIT");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(waiter.read_reply(), Reply::Int(0), "{runtime:?}: WAIT 1 5000 with the replicas stopped");
        assert!(wait_sent.elapsed() >= Duration::from_millis(4900), "{runtime:?}: WAIT 1 5000 returned early");

        servers[1].signal("CONT");
        servers[2].signal("CONT");
        assert!(
            wait_until(CONVERGE, || converged_master(&all) == Some(all[0])),
            "{runtime:?}: stopped replicas changed the master; log:\n{}",
            proxy.log()
        );
        // With the replicas back, WAIT counts those that acknowledged the client's write.
        assert_eq!(shared.call(&[b"SET", b"a", b"3"]), status("OK"));
        let reply = shared.call(&[b"WAIT", b"2", b"5000"]);
        assert_eq!(reply, Reply::Int(2), "{runtime:?}: SET then WAIT 2 5000 with both replicas up");
    }
}

#[test]
fn sigkill_of_the_master_with_default_settings_resumes_writes_within_a_second() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let proxy = Proxy::start(runtime, &all, "");
        let load = start_write_load(proxy.port);
        std::thread::sleep(Duration::from_millis(1500));
        let killed = Instant::now();
        servers[0].kill();
        let resumed = wait_until(CONVERGE, || {
            RespConn::try_connect(proxy.port, Duration::from_secs(5))
                .and_then(|mut c| c.try_call(&[b"SET", b"probe-write", b"1"]))
                .is_ok_and(|r| r == status("OK"))
        });
        let first_write = killed.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let stats = load.finish();
        eprintln!("{runtime:?}: SIGKILL, default settings: first write after {first_write:?}; load {stats:?}");
        assert!(resumed, "{runtime:?}: writes did not resume; log:\n{}", proxy.log());
        // The target is 0.5 s; 1 s leaves room for a loaded 2-core machine.
        assert!(
            first_write < Duration::from_secs(1) && stats.longest_gap < Duration::from_secs(1),
            "{runtime:?}: writes resumed {first_write:?} after the SIGKILL (longest gap {:?}); log:\n{}",
            stats.longest_gap,
            proxy.log()
        );
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()), "replicas did not converge");
    }
}
