//! Measures the write outage a client sees when the master is SIGKILLed: a master with two replicas behind the
//! proxy, a steady write load through it, the master killed, the longest gap between two acknowledged writes
//! reported per run and as a median.
//!
//! `cargo run --release -p redis-proxy-tests --example failover_outage -- [RUNS] [CHECK_PERIOD_MS] [mio|tokio]`
//! (defaults: 5 runs, the proxy's default settings, mio). Needs `redis-server`; everything runs on 127.0.0.1.
//!
//! With the word `sentinel` among the arguments the proxy runs in Sentinel mode instead: three sentinels
//! (`down-after-milliseconds` 2000, quorum 2) decide the failover, and the proxy has `hold_ms` 15000 so that
//! writes wait for it rather than fail.

use redis_proxy_tests::cluster::{ports, start_write_load, synced_cluster, CONVERGE};
use redis_proxy_tests::sentinel::{master_named_by, sentinel_section, three_sentinels, DOWN_AFTER_MS};
use redis_proxy_tests::{status, wait_until, Proxy, RespConn, Runtime};
use std::time::{Duration, Instant};

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns whether it held.
fn wait_until_every(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn main() {
    let all_args: Vec<String> = std::env::args().skip(1).collect();
    let sentinel_mode = all_args.iter().any(|a| a == "sentinel");
    let args: Vec<String> = all_args.into_iter().filter(|a| a != "sentinel").collect();
    let runs: usize = args.first().map_or(5, |a| a.parse().expect("RUNS is a number"));
    let check_period: Option<u64> = args.get(1).map(|a| a.parse().expect("CHECK_PERIOD_MS is a number"));
    let runtime = match args.get(2).map(String::as_str) {
        None | Some("mio") => Runtime::Mio,
        Some(other) => Runtime::ALL
            .iter()
            .copied()
            .find(|r| r.binary_name().ends_with(other))
            .unwrap_or_else(|| panic!("unknown runtime {other}")),
    };
    let extra = check_period.map(|ms| format!(r#""check_period": {ms}"#)).unwrap_or_default();
    let mut setting = check_period.map_or("defaults".to_string(), |ms| format!("check_period {ms} ms"));
    if sentinel_mode {
        setting.push_str(&format!(", Sentinel mode, down-after-milliseconds {DOWN_AFTER_MS}"));
    }
    let mut outages = Vec::new();
    for run in 1..=runs {
        let mut servers = synced_cluster(2, &[]);
        // Kept until the end of the run: the sentinels decide the failover in Sentinel mode.
        let (proxy, sentinels) = if sentinel_mode {
            let sentinels = three_sentinels(servers[0].port, 2);
            let list: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
            let mut fields = format!(r#"{}, "hold_ms": 15000"#, sentinel_section(&list, ""));
            if !extra.is_empty() {
                fields = format!("{fields}, {extra}");
            }
            (Proxy::start_with_fields(runtime, &fields), sentinels)
        } else {
            (Proxy::start(runtime, &ports(&servers), &extra), Vec::new())
        };
        let load = start_write_load(proxy.port);
        // Kill at a different point of the probe cycle in each run, so the runs sample the whole cycle.
        let phase = (run as u64 * 7919) % 1000 * check_period.unwrap_or(1000) / 1000;
        std::thread::sleep(Duration::from_millis(500 + phase));
        let killed_at = Instant::now();
        let old_master = servers[0].port;
        let sentinel_ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        // In Sentinel mode: when two of the three sentinels first name another master (the proxy cannot follow
        // sooner), polled every 5 ms.
        let agreement = std::thread::spawn(move || {
            let moved = |port: &u16| master_named_by(*port).is_some_and(|m| m != old_master);
            let agreed = || sentinel_ports.iter().filter(|p| moved(p)).count() >= 2;
            (!sentinel_ports.is_empty() && wait_until_every(Duration::from_secs(15), agreed))
                .then(|| killed_at.elapsed())
        });
        servers[0].kill();
        let resumed = wait_until(CONVERGE, || {
            RespConn::try_connect(proxy.port, Duration::from_secs(5))
                .and_then(|mut c| c.try_call(&[b"SET", b"outage-probe", b"1"]))
                .is_ok_and(|r| r == status("OK"))
        });
        assert!(resumed, "writes did not resume; proxy log:\n{}", proxy.log());
        let first_write = killed_at.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let stats = load.finish();
        if let Some(at) = agreement.join().expect("agreement thread") {
            let ms = at.as_secs_f64() * 1000.0;
            println!("run {run}: two of the three sentinels named the new master {ms:.0} ms after the kill");
        }
        println!(
            "run {run}: longest gap between acknowledged writes {:.0} ms (first write after the kill at {:.0} ms; \
             {} acked, {} errors)",
            stats.longest_gap.as_secs_f64() * 1000.0,
            first_write.as_secs_f64() * 1000.0,
            stats.acked,
            stats.errors
        );
        outages.push(stats.longest_gap);
    }
    outages.sort();
    let median = outages[outages.len() / 2];
    println!(
        "{} ({setting}): median write outage over {runs} SIGKILL failovers: {:.0} ms (min {:.0}, max {:.0})",
        runtime.binary_name(),
        median.as_secs_f64() * 1000.0,
        outages[0].as_secs_f64() * 1000.0,
        outages[outages.len() - 1].as_secs_f64() * 1000.0
    );
}
