//! Chaos soak: a master with two replicas behind the proxy, clients writing sequenced keys through it (with
//! `WAIT 1 200` after every 20th write), while a seeded random driver, one fault at a time, SIGKILLs and restarts
//! servers, SIGSTOPs them briefly, runs 2 s scripts and `DEBUG SLEEP 2` on them.
//!
//! `cargo run --release -p redis-proxy-tests --example chaos -- [SECONDS] [mio|tokio] [SEED]` (defaults: 60 s,
//! mio, a seed from the clock; the seed is printed so a run can be repeated). Everything runs on 127.0.0.1.
//!
//! Reports failovers, false failovers (a promotion while the master was alive: every busy fault here lasts at most
//! 2 s, far below the busy bound), writes confirmed by `WAIT` >= 1 and then lost, moments where two servers
//! report role master for longer than the proxy's check cycle, client errors by kind and the proxy's RSS.
//! Exits 1 if a false failover happened, a confirmed write was lost, or the servers did not settle at the end.

use redis_proxy_tests::cluster::{converged_master, ports, synced_cluster};
use redis_proxy_tests::{info_field, replication_role, status, wait_until, Proxy, Reply, RespConn, Runtime};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHECK_PERIOD_MS: u64 = 100;
const CLIENTS: u64 = 4;
const WAIT_EVERY: u64 = 20;
/// How long the topology may take to settle after a fault before the driver notes it and goes on.
const SETTLE: Duration = Duration::from_secs(20);
/// A Lua script that spins on `TIME` for ARGV[1] ms.
const SPIN: &str = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
    while true do local n = redis.call('TIME') \
    if n[1] * 1000000 + n[2] - s >= tonumber(ARGV[1]) * 1000 then return 'done' end end";

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one writing client saw.
#[derive(Default)]
struct ClientReport {
    acked: u64,
    /// Writes (key, value) acknowledged and then confirmed by a `WAIT 1 200` answering >= 1 on the same
    /// connection.
    confirmed: Vec<(String, String)>,
    /// Writes acknowledged but not confirmed (WAIT answered 0, failed, or the connection broke first).
    unconfirmed: Vec<(String, String)>,
    errors: BTreeMap<String, u64>,
}

/// A short name for an error reply: its code, and for `ERR` the first words.
fn error_kind(message: &str) -> String {
    let words: Vec<&str> = message.split_whitespace().collect();
    let take = if words.first() == Some(&"ERR") { 5 } else { 1 };
    words.iter().take(take).copied().collect::<Vec<_>>().join(" ")
}

/// Counts one error of `kind`.
fn note(report: &mut ClientReport, kind: String) {
    *report.errors.entry(kind).or_default() += 1;
}

/// Writes `SET chaos:<id>:<seq> <seq>@<ms since started>` through the proxy until `until`, with `WAIT 1 200` after
/// every 20th.
fn run_client(id: u64, port: u16, started: Instant, until: Instant) -> ClientReport {
    let mut report = ClientReport::default();
    let mut conn: Option<RespConn> = None;
    let mut pending: Vec<(String, String)> = Vec::new();
    for seq in 0..10_000_000u64 {
        if Instant::now() >= until {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RespConn::try_connect(port, Duration::from_secs(5)) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    note(&mut report, format!("connect: {:?}", e.kind()));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let key = format!("chaos:{id}:{seq}");
        let value = format!("{seq}@{}", started.elapsed().as_millis());
        let mut broken = false;
        match c.try_call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
            Ok(reply) if reply == status("OK") => {
                report.acked += 1;
                pending.push((key, value));
            }
            Ok(Reply::Error(e)) => note(&mut report, error_kind(&e)),
            Ok(other) => note(&mut report, format!("unexpected reply to SET: {other:?}")),
            Err(e) => {
                note(&mut report, format!("io: {:?}", e.kind()));
                broken = true;
            }
        }
        if !broken && seq % WAIT_EVERY == WAIT_EVERY - 1 {
            match c.try_call(&[b"WAIT", b"1", b"200"]) {
                Ok(Reply::Int(n)) if n >= 1 => report.confirmed.append(&mut pending),
                Ok(Reply::Int(_)) => report.unconfirmed.append(&mut pending),
                Ok(Reply::Error(e)) => note(&mut report, format!("WAIT: {}", error_kind(&e))),
                Ok(other) => note(&mut report, format!("unexpected reply to WAIT: {other:?}")),
                Err(e) => {
                    note(&mut report, format!("WAIT io: {:?}", e.kind()));
                    broken = true;
                }
            }
        }
        if broken {
            conn = None;
            report.unconfirmed.append(&mut pending);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    report.unconfirmed.append(&mut pending);
    report
}

/// What the sampler saw: runs of two or more servers reporting role master, and the proxy's RSS.
#[derive(Default)]
struct Samples {
    /// Durations of runs of consecutive samples in which two or more servers reported role master.
    two_master_runs: Vec<Duration>,
    /// (seconds since start, VmRSS in kB).
    rss: Vec<(u64, u64)>,
}

/// The proxy's resident set size in kB, from /proc.
fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples every server's role every 100 ms and the proxy's RSS every second until `stop` (or `limit`).
fn sample(all: Vec<u16>, proxy_pid: u32, stop: Arc<AtomicBool>, limit: Duration) -> Samples {
    let started = Instant::now();
    let mut samples = Samples::default();
    let mut run_start: Option<Instant> = None;
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let masters = all.iter().filter(|p| replication_role(**p).is_some_and(|(role, _)| role == "master")).count();
        match (masters >= 2, run_start) {
            (true, None) => run_start = Some(Instant::now()),
            (false, Some(since)) => {
                samples.two_master_runs.push(since.elapsed());
                run_start = None;
            }
            _ => {}
        }
        if tick % 10 == 0 {
            if let Some(kb) = vm_rss_kb(proxy_pid) {
                samples.rss.push((started.elapsed().as_secs(), kb));
            }
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(since) = run_start {
        samples.two_master_runs.push(since.elapsed());
    }
    samples
}

/// One master that every other server replicates with its link up, and that lists every one of them as an
/// online replica (initial synchronisation done): only then does the driver inject the next fault.
fn settled(all: &[u16]) -> Option<u16> {
    let master = converged_master(all)?;
    let links_up = all
        .iter()
        .filter(|p| **p != master)
        .all(|p| info_field(*p, "replication", "master_link_status").as_deref() == Some("up"));
    let mut conn = RespConn::try_connect(master, Duration::from_secs(1)).ok()?;
    let Ok(Reply::Bulk(Some(info))) = conn.try_call(&[b"INFO", b"replication"]) else { return None };
    let online =
        String::from_utf8_lossy(&info).lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count();
    (links_up && online == all.len() - 1).then_some(master)
}

/// How many promotions the proxy has logged.
fn promotions(proxy: &Proxy) -> usize {
    proxy.log().lines().filter(|l| l.contains("promoting")).count()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(60, |a| a.parse().expect("SECONDS is a number"));
    let runtime_name = args.get(1).map_or("mio", String::as_str);
    let runtime = match runtime_name {
        "mio" => Runtime::Mio,
        "tokio" => Runtime::Tokio,
        other => panic!("unknown runtime {other} (mio or tokio)"),
    };
    let seed: u64 = args.get(2).map_or_else(
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
        |a| a.parse().expect("SEED is a number"),
    );
    let fields = format!(r#""check_period": {CHECK_PERIOD_MS}"#);
    // REDIS_PROXY_TEST_WORKERS (see Proxy::start_with_fields) runs the proxy with worker threads.
    let workers = redis_proxy_tests::test_workers(&fields).map_or(String::new(), |n| format!(", {n} workers"));
    println!(
        "chaos: {}{workers} for {seconds} s, seed {seed} (repeat with: -- {seconds} {runtime_name} {seed})",
        runtime.binary_name()
    );
    let mut rng = Rng(seed);

    let mut servers = synced_cluster(2, &["--enable-debug-command", "local", "--busy-reply-threshold", "1000"]);
    let all = ports(&servers);
    let mut proxy = Proxy::start(runtime, &all, &fields);
    let started = Instant::now();
    let started_utc =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() % 86_400.0);
    let started_utc = format!(
        "{:02}:{:02}:{:06.3}",
        (started_utc / 3600.0) as u64,
        (started_utc / 60.0) as u64 % 60,
        started_utc % 60.0
    );
    let chaos_end = started + Duration::from_secs(seconds);

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (all, pid, stop) = (all.clone(), proxy.pid(), stop_sampling.clone());
        std::thread::spawn(move || sample(all, pid, stop, Duration::from_secs(seconds + 120)))
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let port = proxy.port;
            std::thread::spawn(move || run_client(id, port, started, chaos_end))
        })
        .collect();

    let (mut false_failovers, mut unsettled) = (0usize, 0usize);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..seconds {
        if Instant::now() >= chaos_end {
            break;
        }
        let at = started.elapsed();
        let before = promotions(&proxy);
        let master = converged_master(&all);
        // Half the faults hit the master, the others any server.
        let index = match master {
            Some(m) if rng.below(2) == 0 => all.iter().position(|p| *p == m).expect("a known port"),
            _ => rng.below(all.len() as u64) as usize,
        };
        let port = all[index];
        let on_master = master == Some(port);
        let (name, detail) = match rng.below(4) {
            0 => {
                let down = Duration::from_millis(rng.below(1000));
                servers[index].kill();
                std::thread::sleep(down);
                servers[index].restart();
                ("SIGKILL + restart", format!("down {} ms", down.as_millis()))
            }
            1 => {
                let stopped = Duration::from_millis(300 + rng.below(1700));
                servers[index].signal("STOP");
                std::thread::sleep(stopped);
                servers[index].signal("CONT");
                ("SIGSTOP", format!("{} ms", stopped.as_millis()))
            }
            2 => {
                let reply = RespConn::try_connect(port, Duration::from_secs(10))
                    .and_then(|mut c| c.try_call(&[b"EVAL", SPIN.as_bytes(), b"0", b"2000"]));
                ("2 s script", describe(reply))
            }
            _ => {
                let reply = RespConn::try_connect(port, Duration::from_secs(10))
                    .and_then(|mut c| c.try_call(&[b"DEBUG", b"SLEEP", b"2"]));
                ("DEBUG SLEEP 2", describe(reply))
            }
        };
        *faults.entry(name).or_default() += 1;
        let settled_in = Instant::now();
        let ok = wait_until(SETTLE, || settled(&all).is_some());
        let promoted = promotions(&proxy) - before;
        let killed_master = on_master && name.starts_with("SIGKILL");
        let verdict = if promoted > 0 && !killed_master {
            false_failovers += promoted;
            " FALSE FAILOVER"
        } else {
            ""
        };
        if !ok {
            unsettled += 1;
        }
        println!(
            "t={:5.1}s {name} on {port}{} ({detail}): promotions +{promoted}{verdict}; {}",
            at.as_secs_f64(),
            if on_master { " (master)" } else { "" },
            if ok { format!("settled in {} ms", settled_in.elapsed().as_millis()) } else { "NOT settled".into() }
        );
        std::thread::sleep(Duration::from_millis(200 + rng.below(1300)));
    }

    let reports: Vec<ClientReport> = clients.into_iter().map(|c| c.join().expect("client thread")).collect();
    let mut final_master = None;
    wait_until(Duration::from_secs(30), || {
        final_master = settled(&all);
        final_master.is_some()
    });
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");
    let proxy_alive = proxy.is_running();

    let acked: u64 = reports.iter().map(|r| r.acked).sum();
    let confirmed: Vec<&(String, String)> = reports.iter().flat_map(|r| &r.confirmed).collect();
    let unconfirmed: Vec<&(String, String)> = reports.iter().flat_map(|r| &r.unconfirmed).collect();
    let (lost_confirmed, lost_unconfirmed) = match final_master {
        Some(master) => {
            let mut conn = RespConn::connect(master);
            (lost_writes(&mut conn, &confirmed), lost_writes(&mut conn, &unconfirmed))
        }
        None => (vec![], vec![]),
    };
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for (kind, n) in reports.iter().flat_map(|r| &r.errors) {
        *errors.entry(kind).or_default() += n;
    }
    let cycle = Duration::from_millis(CHECK_PERIOD_MS);
    let long_runs: Vec<&Duration> = samples.two_master_runs.iter().filter(|d| **d > cycle).collect();
    let longest = samples.two_master_runs.iter().max().copied().unwrap_or_default();

    println!("--- chaos report: {}{workers} for {seconds} s, seed {seed}", runtime.binary_name());
    println!("faults: {faults:?}; topology not settled within {SETTLE:?} after a fault: {unsettled}");
    println!("failovers (promotions in the proxy log): {}", promotions(&proxy));
    println!("false failovers (promotion while the master was alive and busy < 2 s): {false_failovers} (must be 0)");
    println!(
        "writes: {acked} acknowledged, {} confirmed by WAIT >= 1, {} not confirmed",
        confirmed.len(),
        unconfirmed.len()
    );
    match final_master {
        Some(master) => {
            println!(
                "lost after the run (read back from the final master {master}): confirmed {} (must be 0), \
                 unconfirmed {} (allowed)",
                lost_confirmed.len(),
                lost_unconfirmed.len()
            );
            if !lost_confirmed.is_empty() {
                println!("lost confirmed writes: {}", ranges(&lost_confirmed));
                println!("the proxy's topology decisions (times are UTC; the run started at {started_utc}):");
                let log = proxy.log();
                let decisions = log.lines().filter(|l| {
                    ["master is", "promoting", "REPLICAOF", " lost:", "is down", "is up"].iter().any(|w| l.contains(w))
                });
                for line in decisions.take(300) {
                    println!("  {line}");
                }
            }
        }
        None => println!("the servers did not settle on one master within 30 s: lost writes NOT checked"),
    }
    println!(
        "two servers reporting role master for longer than one check cycle ({} ms): {} time(s), longest {} ms \
         (informational: a restarted or woken server reports master until the proxy re-points it)",
        CHECK_PERIOD_MS,
        long_runs.len(),
        longest.as_millis()
    );
    println!("client errors by kind: {errors:?}");
    let every = samples.rss.len().div_ceil(12).max(1);
    let rss: Vec<String> = samples.rss.iter().step_by(every).map(|(t, kb)| format!("{t}s:{kb}kB")).collect();
    let max_rss = samples.rss.iter().map(|(_, kb)| *kb).max().unwrap_or(0);
    println!("proxy RSS over time: {}; max {max_rss} kB; proxy still running: {proxy_alive}", rss.join(" "));

    let failed = false_failovers > 0 || !lost_confirmed.is_empty() || final_master.is_none() || !proxy_alive;
    if failed {
        println!("FAILED: a must-be-0 figure is not 0 (or the run could not be checked)");
        // Returning (not exiting) stops the servers and the proxy as their handles drop.
        return ExitCode::FAILURE;
    }
    println!("OK");
    ExitCode::SUCCESS
}

/// A reply as short text for the fault log.
fn describe(reply: std::io::Result<Reply>) -> String {
    match reply {
        Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
        Ok(Reply::Status(text)) => text,
        Ok(Reply::Error(text)) => format!("-{text}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("io error: {e}"),
    }
}

/// The writes among `writes` whose key does not hold the value written on the server behind `conn`.
fn lost_writes<'a>(conn: &mut RespConn, writes: &[&'a (String, String)]) -> Vec<&'a (String, String)> {
    let mut lost = Vec::new();
    for batch in writes.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(batch.iter().map(|(k, _)| k.as_bytes()));
        let Reply::Array(Some(values)) = conn.call(&args) else { panic!("MGET did not answer an array") };
        for (write, value) in batch.iter().zip(values) {
            if value != Reply::Bulk(Some(write.1.as_bytes().to_vec())) {
                lost.push(*write);
            }
        }
    }
    lost
}

/// Lost writes as runs of consecutive sequence numbers per client, each with the time its first write was sent
/// (`chaos:1:200..=260 (sent at 12.345 s)`), at most 10.
fn ranges(writes: &[&(String, String)]) -> String {
    let mut parsed: Vec<(u64, u64, &str)> = writes
        .iter()
        .filter_map(|(key, value)| {
            let mut parts = key.split(':').skip(1);
            let at = value.split('@').nth(1)?;
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, at))
        })
        .collect();
    parsed.sort_unstable();
    let mut runs: Vec<(u64, u64, u64, &str)> = Vec::new();
    for (client, seq, at) in parsed {
        match runs.last_mut() {
            Some((c, _, last, _)) if *c == client && *last + 1 == seq => *last = seq,
            _ => runs.push((client, seq, seq, at)),
        }
    }
    let shown: Vec<String> =
        runs.iter().take(10).map(|(c, a, b, at)| format!("chaos:{c}:{a}..={b} (sent at {at} ms)")).collect();
    format!("{}{}", shown.join(" "), if runs.len() > 10 { " ..." } else { "" })
}
