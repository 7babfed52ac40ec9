//! Issue 14 end to end: proxies in Sentinel mode in front of a master and two replicas watched by three real
//! sentinels. Sentinel fails over, the proxies follow the majority; the old master restarted is re-attached by
//! Sentinel and never routed to; one sentinel stopped, they still follow; two stopped, the master is kept; a lying
//! sentinel is outvoted; reads go to the replicas Sentinel lists as healthy.

use redis_proxy_tests::cluster::{ports, synced_cluster, CONVERGE};
use redis_proxy_tests::sentinel::{sentinel_section, three_sentinels, Sentinel};
use redis_proxy_tests::{
    bulk, calls, replication_role, reset_stats, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime,
};
use std::time::Duration;

/// Probes every 100 ms; requests may wait 15 s for a master (a Sentinel failover with a 2 s down-after takes a few
/// seconds, and the other sentinels learn its outcome from the leader's hello messages, sent every 2 s).
const FAST: &str = r#""check_period": 100"#;
const HOLD: &str = r#""hold_ms": 15000"#;

/// A proxy following `sentinels`, with `inner` members in its `sentinel` section and `outer` ones beside it
/// ([`FAST`] and [`HOLD`] unless `outer` sets `check_period` or `hold_ms`).
fn sentinel_proxy(runtime: Runtime, sentinels: &[u16], inner: &str, outer: &str) -> Proxy {
    let mut fields = vec![sentinel_section(sentinels, inner)];
    let defaults = [(FAST, "check_period"), (HOLD, "hold_ms")];
    fields.extend(defaults.iter().filter(|(_, field)| !outer.contains(field)).map(|(member, _)| member.to_string()));
    fields.extend((!outer.is_empty()).then(|| outer.to_string()));
    Proxy::start_with_fields(runtime, &fields.join(", "))
}

/// Writes `key` through `proxy` until it is acknowledged; panics with the proxy's log after [`CONVERGE`].
fn write_through(proxy: &Proxy, key: &str) {
    let ok = wait_until(CONVERGE, || {
        RespConn::try_connect(proxy.port, Duration::from_secs(16))
            .and_then(|mut c| c.try_call(&[b"SET", key.as_bytes(), b"1"]))
            .is_ok_and(|r| r == status("OK"))
    });
    assert!(ok, "a write through the proxy was not acknowledged; its log:\n{}", proxy.log());
}

/// The master every running sentinel in `sentinels` names, once they agree.
fn agreed_master(sentinels: &[&Sentinel]) -> Option<u16> {
    agreed(&named_masters(sentinels))
}

/// The master each of `sentinels` names now.
fn named_masters(sentinels: &[&Sentinel]) -> Vec<Option<u16>> {
    sentinels.iter().map(|s| s.master_port()).collect()
}

/// The master all of `named` name, if they agree.
fn agreed(named: &[Option<u16>]) -> Option<u16> {
    named[0].filter(|m| named.iter().all(|n| *n == Some(*m)))
}

/// The master `sentinels` agree on, once a write through each of `proxies` (keys `label:...`) lands on it: a
/// failover may still be ending.
fn master_every_proxy_writes_to(proxies: &[Proxy], sentinels: &[&Sentinel], label: &str) -> u16 {
    let (mut attempt, mut last) = (0, None);
    let landed = wait_until(CONVERGE, || {
        attempt += 1;
        last = agreed_master(sentinels);
        let Some(master) = last else { return false };
        let keys: Vec<String> = (0..proxies.len()).map(|i| format!("{label}:{attempt}:{i}")).collect();
        for (proxy, key) in proxies.iter().zip(&keys) {
            write_through(proxy, key);
        }
        let is_master = replication_role(master).is_some_and(|(role, _)| role == "master");
        is_master && keys.iter().all(|k| RespConn::connect(master).call(&[b"GET", k.as_bytes()]) == bulk(b"1"))
    });
    assert!(landed, "the proxies' writes did not land on the sentinels' master ({last:?})");
    last.unwrap()
}

fn assert_is_master_with(port: u16, key: &str) {
    assert_eq!(replication_role(port).map(|(role, _)| role), Some("master".into()), "{port} is no master");
    assert_eq!(RespConn::connect(port).call(&[b"GET", key.as_bytes()]), bulk(b"1"), "{key} is not on {port}");
}

#[test]
fn proxies_follow_sentinel_failovers_and_keep_the_master_without_a_majority() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let mut sentinels = three_sentinels(all[0], 2);
        let sentinel_ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        // Without a majority they keep their master for 20 s: longer than this test needs, on a loaded machine too.
        let patient = r#""majority_lost_after": 20000"#;
        let proxies = [
            sentinel_proxy(runtime, &sentinel_ports, patient, ""),
            sentinel_proxy(runtime, &sentinel_ports, patient, ""),
        ];
        for (i, proxy) in proxies.iter().enumerate() {
            write_through(proxy, &format!("before:{i}"));
            assert_is_master_with(all[0], &format!("before:{i}"));
        }

        // SIGKILL of the master: Sentinel promotes a replica, both proxies route writes to it.
        servers[0].kill();
        for (i, proxy) in proxies.iter().enumerate() {
            write_through(proxy, &format!("after:{i}"));
        }
        let running: Vec<&Sentinel> = sentinels.iter().collect();
        assert!(wait_until(CONVERGE, || agreed_master(&running).is_some()), "the sentinels did not agree");
        let new_master = agreed_master(&running).unwrap();
        assert_ne!(new_master, all[0]);
        for i in 0..proxies.len() {
            assert_is_master_with(new_master, &format!("after:{i}"));
        }

        // The old master restarts as a master (its own configuration) until Sentinel re-attaches it: no proxy
        // routes a request to it meanwhile. Sentinel converts it once it has reported role:master for 8 s and been
        // up for 8 s, checked at its 10 s INFO period (11-21 s); a sentinel in TILT mode (its timer ran over 2 s
        // late, as on a loaded machine) acts on nothing for 30 s. Sentinel may also fail over again meanwhile (as
        // it did with a 1 s down-after, see `DOWN_AFTER_MS`): the old master is then re-attached to the master
        // the sentinels agree on by then, or is that master itself (Sentinel may pick it), and the proxies follow.
        servers[0].restart();
        let old = all[0];
        let (mut round, mut rounds_as_master, restarted_at) = (0, 0, std::time::Instant::now());
        let reattached = wait_until(Duration::from_secs(60), || {
            round += 1;
            for (i, proxy) in proxies.iter().enumerate() {
                write_through(proxy, &format!("restarted:{round}:{i}"));
            }
            // Read the count first: a master never receives replicated writes, so any SET it counted while it
            // still reports role:master came from a client. A proxy routes writes to it only once two sentinels
            // name it, and they still do when asked after the count.
            let sets = calls(old, "set");
            let role = replication_role(old);
            let named = named_masters(&running);
            if named.contains(&Some(old)) {
                // Sentinel chose the restarted server in a failover of its own: it is the master now.
                return true;
            }
            match role {
                Some((role, _)) if role == "master" => {
                    assert_eq!(sets, 0, "a proxy routed writes to the restarted old master");
                    rounds_as_master += 1;
                    false
                }
                Some((_, of)) => of.is_some() && of == agreed(&named),
                None => false,
            }
        });
        let logs: Vec<String> = sentinels.iter().map(Sentinel::log).collect();
        assert!(reattached, "Sentinel did not re-attach the old master; the sentinels' logs:\n{}", logs.join("\n"));
        let took = restarted_at.elapsed().as_secs_f64();
        eprintln!(
            "{runtime:?}: the restarted old master got no write in {rounds_as_master} rounds as a master ({took:.1} s)"
        );
        let master = master_every_proxy_writes_to(&proxies, &running, "reattached");

        // One sentinel stopped: the two others are still a majority of three and still fail over.
        sentinels[2].kill();
        let index = all.iter().position(|p| *p == master).unwrap();
        servers[index].kill();
        for (i, proxy) in proxies.iter().enumerate() {
            write_through(proxy, &format!("second:{i}"));
        }
        let running: Vec<&Sentinel> = sentinels[..2].iter().collect();
        assert!(wait_until(CONVERGE, || agreed_master(&running).is_some_and(|m| m != master)));
        let third_master = agreed_master(&running).unwrap();
        for i in 0..proxies.len() {
            assert_is_master_with(third_master, &format!("second:{i}"));
        }

        // A proxy that stops routing writes 300 ms after it last heard a majority.
        let bounded = sentinel_proxy(runtime, &sentinel_ports, r#""majority_lost_after": 300"#, r#""hold_ms": 200"#);
        write_through(&bounded, "bounded");

        // Two of three stopped (the second one with SIGSTOP: silent, as behind a partition): no majority, so nothing
        // new is accepted; the current master is kept (with a warning) and service goes on, within
        // `majority_lost_after`.
        sentinels[1].stop();
        for round in 0..10 {
            for (i, proxy) in proxies.iter().enumerate() {
                let key = format!("alone:{round}:{i}");
                assert_eq!(proxy.connect().call(&[b"SET", key.as_bytes(), b"1"]), status("OK"));
                assert_is_master_with(third_master, &key);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for proxy in &proxies {
            assert!(proxy.log().contains("no 2 of 3 sentinels agree"), "no warning in the log:\n{}", proxy.log());
        }
        // Past its bound, the proxy cut off from the majority has stopped routing writes.
        let refused =
            matches!(bounded.connect().call(&[b"SET", b"k", b"v"]), Reply::Error(e) if e.starts_with("MASTERDOWN"));
        assert!(refused, "a proxy cut off from the majority still routed a write; its log:\n{}", bounded.log());
    }
}

/// A sentinel that monitors another server under the same name (a stale configuration) is outvoted.
#[test]
fn a_lying_sentinel_is_outvoted() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let stray = RedisServer::start();
        let honest = [Sentinel::start(master.port), Sentinel::start(master.port)];
        let liar = Sentinel::start(stray.port);
        assert_eq!(liar.master_port(), Some(stray.port));
        let list = [honest[0].port, liar.port, honest[1].port];
        let proxy = sentinel_proxy(runtime, &list, "", "");
        for i in 0..20 {
            let key = format!("k{i}");
            write_through(&proxy, &key);
            assert_is_master_with(master.port, &key);
        }
        assert_eq!(calls(stray.port, "set"), 0, "a write went to the server the lying sentinel names");
    }
}

/// In `readsToSlaves`, reads go to the replicas the sentinels list as healthy, none to the master.
#[test]
fn reads_go_to_the_replicas_sentinel_lists() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = synced_cluster(2, &[]);
        let all = ports(&servers);
        let sentinels = three_sentinels(all[0], 2);
        let sentinel_ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        let proxy = sentinel_proxy(
            runtime,
            &sentinel_ports,
            "",
            // A replica whose probe is half a check period late gets no reads: 500 ms here, so that a loaded
            // machine does not send reads elsewhere.
            r#""mode": "readsToSlaves", "read_your_writes": false, "replica_max_lag": 60000, "check_period": 1000"#,
        );
        write_through(&proxy, "k");
        // Reads reach the replicas once the proxy has the sentinels' replica list and the replicas' INFO.
        let mut conn = proxy.connect();
        assert!(wait_until(CONVERGE, || {
            reset_stats(&servers);
            for _ in 0..10 {
                assert_eq!(conn.call(&[b"GET", b"k"]), bulk(b"1"));
            }
            calls(all[0], "get") == 0
        }));
        reset_stats(&servers);
        for _ in 0..100 {
            assert_eq!(conn.call(&[b"GET", b"k"]), bulk(b"1"));
        }
        let per_server: Vec<u64> = all.iter().map(|p| calls(*p, "get")).collect();
        let spread = per_server[0] == 0 && per_server[1] > 0 && per_server[2] > 0;
        assert!(spread && per_server.iter().sum::<u64>() == 100, "reads per server (master first): {per_server:?}");
    }
}

/// Sentinels that require a password: the proxy authenticates with the configured one, and with a wrong one it
/// accepts no master (and says why in its log).
#[test]
fn the_proxy_authenticates_to_the_sentinels() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let sentinel = Sentinel::start_with(master.port, "requirepass s3cret");
        let proxy = sentinel_proxy(runtime, &[sentinel.port], r#""password": "s3cret""#, "");
        write_through(&proxy, "authenticated");
        assert_is_master_with(master.port, "authenticated");
        let wrong = sentinel_proxy(runtime, &[sentinel.port], r#""password": "wrong""#, r#""hold_ms": 200"#);
        assert!(wait_until(Duration::from_secs(5), || wrong.log().contains("AUTH failed")), "{}", wrong.log());
        let reply = wrong.connect().call(&[b"SET", b"k", b"v"]);
        assert!(matches!(&reply, Reply::Error(e) if e.starts_with("MASTERDOWN")), "{reply:?}");
    }
}
