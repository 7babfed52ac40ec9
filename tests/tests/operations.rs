//! Operating the proxy, end to end on both runtimes: the status page in headless Chromium, `/status.json`,
//! `/metrics` parsed by a Prometheus text parser, `/health`.

use redis_proxy_tests::cluster::{cluster, converged_master, ports, start_write_load, wait_caught_up, CONVERGE};
use redis_proxy_tests::{
    chromium_dom, exclusive, free_port, http_get, status, wait_until, Proxy, RedisServer, Reply, Runtime,
};
use std::time::Duration;

/// One parsed sample: name, sorted labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses `/metrics` with a Prometheus text parser; returns every sample.
fn scrape(port: u16) -> Vec<Sample> {
    let (code, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics is valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let mut labels: Vec<(String, String)> =
                s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            labels.sort();
            (s.metric, labels, value)
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include every pair of `with`.
fn metric(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name && with.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn status_extra(status_port: u16) -> String {
    format!(r#""check_period": 100, "mode": "readsToSlaves", "status_listen": "127.0.0.1:{status_port}""#)
}

#[test]
fn metrics_parse_and_move_and_the_page_shows_the_master_the_replicas_and_a_failover() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut servers = cluster(2);
        let all = ports(&servers);
        let status_port = free_port();
        let proxy = Proxy::start(runtime, &all, &status_extra(status_port));
        assert!(
            wait_until(CONVERGE, || http_get(status_port, "/health").is_some_and(|(code, _)| code == 200)),
            "{runtime:?}: /health never said 200"
        );

        let before = scrape(status_port);
        let mut client = proxy.connect();
        for i in 0..50 {
            let key = format!("k{i}");
            assert_eq!(client.call(&[b"SET", key.as_bytes(), b"v"]), status("OK"));
            client.call(&[b"GET", key.as_bytes()]);
        }
        let after = scrape(status_port);
        let writes = |s: &[_]| metric(s, "redis_proxy_requests_total", &[("class", "write")]);
        let reads = |s: &[_]| metric(s, "redis_proxy_requests_total", &[("class", "read")]);
        assert_eq!(writes(&after) - writes(&before), 50.0, "{runtime:?}: writes counted");
        assert_eq!(reads(&after) - reads(&before), 50.0, "{runtime:?}: reads counted");
        assert!(metric(&after, "redis_proxy_client_received_bytes_total", &[]) > 0.0);
        assert!(metric(&after, "redis_proxy_client_sent_bytes_total", &[]) > 0.0);
        assert_eq!(metric(&after, "redis_proxy_clients_connected", &[]), 1.0);
        assert!(metric(&after, "redis_proxy_request_duration_seconds_count", &[]) > 0.0);
        let master = format!("127.0.0.1:{}", all[0]);
        assert_eq!(metric(&after, "redis_proxy_server_role", &[("server", &master), ("role", "routed_master")]), 1.0);
        assert_eq!(metric(&after, "redis_proxy_master_routable", &[]), 1.0);

        // Replicas read `up` once their initial sync is over (the page says `syncing` until then).
        assert!(
            wait_until(CONVERGE, || http_get(status_port, "/status.json")
                .is_some_and(|(_, body)| body.matches("\"replication\":\"in sync\"").count() == 2)),
            "{runtime:?}: the replicas never finished their initial sync"
        );
        let url = format!("http://127.0.0.1:{status_port}/");
        let dom = chromium_dom(&url);
        assert!(dom.contains(&format!("master 127.0.0.1:{}", all[0])), "{runtime:?}: banner names the master:\n{dom}");
        for replica in &all[1..] {
            let row = format!("<td>127.0.0.1:{replica}</td><td>replica</td><td class=\"up\">up</td>");
            assert!(dom.contains(&row), "{runtime:?}: replica {replica} row missing:\n{dom}");
        }

        servers[0].kill();
        assert!(wait_until(CONVERGE, || converged_master(&all[1..]).is_some()), "{runtime:?}: no new master");
        let new_master = converged_master(&all[1..]).unwrap();
        let failed_over = wait_until(CONVERGE, || {
            http_get(status_port, "/status.json")
                .is_some_and(|(_, body)| body.contains(&format!("\"master\":\"127.0.0.1:{new_master}\"")))
        });
        assert!(failed_over, "{runtime:?}: /status.json never named the new master");
        let dom = chromium_dom(&url);
        assert!(dom.contains(&format!("master 127.0.0.1:{new_master}")), "{runtime:?}: new master shown:\n{dom}");
        let failover_row = format!("<td>127.0.0.1:{}</td><td>127.0.0.1:{new_master}</td><td>it is down</td>", all[0]);
        assert!(dom.contains(&failover_row), "{runtime:?}: failover with its reason shown:\n{dom}");
        let samples = scrape(status_port);
        assert_eq!(metric(&samples, "redis_proxy_failovers_total", &[("reason", "it is down")]), 1.0);
        assert!(metric(&samples, "redis_proxy_last_failover_duration_seconds", &[]) > 0.0);
        drop(proxy);
    }
}

#[test]
fn health_is_503_with_a_reason_while_no_master_is_routable_and_200_after() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut server = RedisServer::start();
        let status_port = free_port();
        let _proxy = Proxy::start(runtime, &[server.port], &status_extra(status_port));
        let health = || http_get(status_port, "/health").expect("/health answers");
        assert!(wait_until(CONVERGE, || health().0 == 200), "{runtime:?}: healthy at first");
        server.kill();
        assert!(wait_until(CONVERGE, || health().0 == 503), "{runtime:?}: 503 once the master is gone");
        let (_, reason) = health();
        assert!(reason.contains("no master") || reason.contains("master 127.0.0.1"), "{runtime:?}: {reason}");
        server.restart();
        assert!(wait_until(CONVERGE, || health().0 == 200), "{runtime:?}: 200 once it is back");
        assert_eq!(http_get(status_port, "/nothing-here").map(|(code, _)| code), Some(404));
    }
}

fn admin_extra(status_port: u16, admin_port: u16) -> String {
    format!(r#"{}, "admin_listen": "127.0.0.1:{admin_port}""#, status_extra(status_port))
}

/// The servers `PROXY SERVERS` lists.
fn proxy_servers(admin_port: u16) -> Vec<String> {
    let mut admin = redis_proxy_tests::RespConn::connect(admin_port);
    match admin.call(&[b"PROXY", b"SERVERS"]) {
        Reply::Array(Some(items)) => items
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(Some(line)) => String::from_utf8_lossy(&line).into_owned(),
                other => panic!("PROXY SERVERS item {other:?}"),
            })
            .collect(),
        other => panic!("PROXY SERVERS answered {other:?}"),
    }
}

#[test]
fn proxy_add_makes_a_fresh_server_a_replica_that_gets_reads_and_remove_under_load_drops_no_request() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(1);
        let all = ports(&servers);
        let fresh = RedisServer::start();
        let (status_port, admin_port) = (free_port(), free_port());
        let proxy = Proxy::start(runtime, &all, &admin_extra(status_port, admin_port));
        let mut client = proxy.connect();
        let refused = client.call(&[b"PROXY", b"SERVERS"]);
        assert!(matches!(&refused, Reply::Error(e) if e.contains("admin listener")), "{runtime:?}: {refused:?}");

        let mut admin = redis_proxy_tests::RespConn::connect(admin_port);
        let address = format!("127.0.0.1:{}", fresh.port);
        assert_eq!(admin.call(&[b"PROXY", b"ADD", address.as_bytes()]), status("OK"));
        let attached = wait_until(CONVERGE, || {
            redis_proxy_tests::replication_role(fresh.port) == Some(("slave".into(), Some(all[0])))
                && redis_proxy_tests::info_field(fresh.port, "replication", "master_link_status").as_deref()
                    == Some("up")
        });
        assert!(attached, "{runtime:?}: the added server did not become a replica of the master");
        assert_eq!(client.call(&[b"SET", b"added", b"1"]), status("OK"));
        let reads_reach_it = wait_until(CONVERGE, || {
            client.call(&[b"GET", b"added"]);
            redis_proxy_tests::info_field(fresh.port, "commandstats", "cmdstat_get").is_some()
        });
        assert!(reads_reach_it, "{runtime:?}: no read reached the added replica");

        // Reads and writes go on while the added replica is removed: none may fail.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (stop, port) = (stop.clone(), proxy.port);
            std::thread::spawn(move || {
                let mut conn = redis_proxy_tests::RespConn::connect(port);
                let (mut ok, mut errors) = (0u64, Vec::new());
                for i in 0..200_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("rm:{i}");
                    let set = conn.try_call(&[b"SET", key.as_bytes(), b"v"]);
                    let get = conn.try_call(&[b"GET", b"added"]);
                    match (set, get) {
                        (Ok(Reply::Status(_)), Ok(Reply::Bulk(_))) => ok += 1,
                        other => errors.push(format!("{other:?}")),
                    }
                }
                (ok, errors)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(admin.call(&[b"PROXY", b"REMOVE", address.as_bytes()]), status("OK draining"));
        let removed = wait_until(CONVERGE, || !proxy_servers(admin_port).iter().any(|s| s.starts_with(&address)));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, errors) = load.join().expect("load thread");
        assert!(removed, "{runtime:?}: the server was never removed");
        eprintln!("{runtime:?}: PROXY REMOVE under load: {ok} SET+GET pairs, {} errors", errors.len());
        assert!(errors.is_empty(), "{runtime:?}: client errors during PROXY REMOVE: {errors:?}");
        assert!(ok > 0);
        let master = format!("127.0.0.1:{}", all[0]);
        let reply = admin.call(&[b"PROXY", b"REMOVE", master.as_bytes()]);
        assert!(matches!(&reply, Reply::Error(e) if e.contains("fail over first")), "{runtime:?}: {reply:?}");
    }
}

#[test]
fn proxy_failover_under_a_sequenced_write_load_loses_no_write_and_gives_no_error() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(2);
        let all = ports(&servers);
        let (status_port, admin_port) = (free_port(), free_port());
        let proxy = Proxy::start(runtime, &all, &admin_extra(status_port, admin_port));
        // Replicas attach before their first sync (which Redis delays by repl-diskless-sync-delay).
        wait_caught_up(&servers[0]);
        let linked = |port: u16| {
            redis_proxy_tests::info_field(port, "replication", "master_link_status").as_deref() == Some("up")
        };
        assert!(wait_until(CONVERGE, || linked(all[1]) && linked(all[2])));
        assert!(wait_until(CONVERGE, || http_get(status_port, "/health").is_some_and(|(c, _)| c == 200)));
        // The proxy has read INFO since the link came up.
        std::thread::sleep(Duration::from_millis(300));
        let load = start_write_load(proxy.port);
        std::thread::sleep(Duration::from_millis(500));
        let mut admin = redis_proxy_tests::RespConn::connect(admin_port);
        let target = format!("127.0.0.1:{}", all[1]);
        let reply = admin.call(&[b"PROXY", b"FAILOVER", target.as_bytes()]);
        std::thread::sleep(Duration::from_millis(500));
        let stats = load.finish();
        let Reply::Status(text) = &reply else { panic!("{runtime:?}: PROXY FAILOVER answered {reply:?}") };
        eprintln!("{runtime:?}: PROXY FAILOVER: {text}; write load {stats:?}");
        assert_eq!(stats.errors, 0, "{runtime:?}: client errors during the switchover");
        assert!(wait_until(CONVERGE, || converged_master(&all) == Some(all[1])), "{runtime:?}: {target} not master");
        // Every write was acknowledged (no errors): all of them must be on the new master.
        let mut new_master = servers[1].connect();
        assert_eq!(new_master.call(&[b"DBSIZE"]), Reply::Int(stats.acked as i64), "{runtime:?}: lost writes");
        let json = http_get(status_port, "/status.json").expect("status").1;
        assert!(json.contains("planned switchover (PROXY FAILOVER)"), "{runtime:?}: {json}");
    }
}

#[test]
fn sighup_adds_a_replica_from_the_file_and_keeps_the_running_config_when_the_file_is_invalid() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let servers = cluster(1);
        let all = ports(&servers);
        let fresh = RedisServer::start();
        let status_port = free_port();
        let proxy = Proxy::start(runtime, &all, &status_extra(status_port));
        let mut client = proxy.connect();
        assert_eq!(client.call(&[b"SET", b"before", b"1"]), status("OK"));

        let config = std::fs::read_to_string(proxy.config_path()).expect("config");
        let old_servers = format!(r#"{{"host": "127.0.0.1", "port": {}}}"#, all[1]);
        let new_servers = format!(r#"{old_servers}, {{"host": "127.0.0.1", "port": {}}}"#, fresh.port);
        let added = config.replace(&old_servers, &new_servers).replacen('{', r#"{"log_level": "debug", "#, 1);
        std::fs::write(proxy.config_path(), added).expect("rewrite");
        assert!(!proxy.log().contains("DEBUG"), "{runtime:?}: RUST_LOG=info, yet debug lines before the reload");
        proxy.signal("HUP");
        let attached = wait_until(CONVERGE, || {
            redis_proxy_tests::replication_role(fresh.port) == Some(("slave".into(), Some(all[0])))
        });
        assert!(attached, "{runtime:?}: the replica added to the file was not attached:\n{}", proxy.log());
        let listed = http_get(status_port, "/status.json").expect("status").1;
        assert!(listed.contains(&format!("127.0.0.1:{}", fresh.port)), "{runtime:?}: {listed}");
        assert!(proxy.log().contains("reload: applied: added server"), "{runtime:?}:\n{}", proxy.log());
        assert!(proxy.log().contains("log level INFO -> DEBUG"), "{runtime:?}:\n{}", proxy.log());
        assert!(
            wait_until(CONVERGE, || proxy.log().contains(" DEBUG timer: ")),
            "{runtime:?}: the reloaded log level did not reach the runtime:\n{}",
            proxy.log()
        );
        assert_eq!(client.call(&[b"GET", b"before"]), redis_proxy_tests::bulk(b"1"), "{runtime:?}: client kept");

        std::fs::write(proxy.config_path(), "{ not json").expect("rewrite");
        proxy.signal("HUP");
        assert!(
            wait_until(CONVERGE, || proxy.log().contains("reload refused, the running configuration is kept")),
            "{runtime:?}: invalid file not refused:\n{}",
            proxy.log()
        );
        std::fs::write(
            proxy.config_path(),
            config.replace(&format!("\"listen_port\": {}", proxy.port), "\"listen_port\": 1"),
        )
        .expect("rewrite");
        proxy.signal("HUP");
        assert!(
            wait_until(CONVERGE, || proxy.log().contains("`listen_port` cannot change while the proxy runs")),
            "{runtime:?}: listen_port change not refused:\n{}",
            proxy.log()
        );
        let listed = http_get(status_port, "/status.json").expect("status").1;
        assert!(listed.contains(&format!("127.0.0.1:{}", fresh.port)), "{runtime:?}: old config kept: {listed}");
        assert_eq!(client.call(&[b"GET", b"before"]), redis_proxy_tests::bulk(b"1"), "{runtime:?}: client kept");
    }
}
