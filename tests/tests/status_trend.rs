//! The status page says what a replica is doing (a replica in its initial sync reads `syncing`, with the reason it
//! gets no reads, and never a negative lag), shows a request rate at once, and charts the last 15 minutes as
//! inline SVG (requests/s by target, p50/p99 latency, held requests, each replica's lag). In headless Chromium,
//! both runtimes.

use redis_proxy_tests::{
    chromium_dom, chromium_screenshot, encode_command, exclusive, free_port, http_get, proxy_binary, scratch_dir,
    wait_until, Proxy, RedisServer, Runtime,
};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sends `count` pipelined `SET`/`GET` pairs through the proxy on `port` and reads every reply.
fn pipeline(port: u16, count: usize) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut batch = Vec::new();
    for i in 0..count / 2 {
        let key = format!("trend:{}", i % 100);
        batch.extend(encode_command(&[b"SET", key.as_bytes(), b"v"]));
        batch.extend(encode_command(&[b"GET", key.as_bytes()]));
    }
    let sender = std::thread::spawn(move || writer.write_all(&batch).expect("send the pipeline"));
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    for _ in 0..count / 2 {
        for _ in 0..2 {
            line.clear();
            reader.read_until(b'\n', &mut line).expect("a reply");
            if line.starts_with(b"$") && line != b"$-1\r\n" {
                line.clear();
                reader.read_until(b'\n', &mut line).expect("the value");
            }
        }
    }
    sender.join().expect("sender");
}

#[test]
fn a_syncing_replica_says_so_and_the_page_charts_the_last_minutes() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        // Built first: the replica's initial sync must not be over by the time the proxy starts.
        let _ = proxy_binary(runtime);
        // The master waits 60 s before it starts a sync: the replica stays in its initial sync all the test.
        let master = RedisServer::start_with(&["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "60"]);
        let replica = RedisServer::start_replica_of(&master);
        let status_port = free_port();
        let extra =
            format!(r#""check_period": 100, "mode": "readsToSlaves", "status_listen": "127.0.0.1:{status_port}""#);
        let proxy = Proxy::start(runtime, &[master.port, replica.port], &extra);
        let json = || http_get(status_port, "/status.json").map(|(_, body)| body).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(10), || json().contains("\"healthy\":true")),
            "{runtime:?}: a master is routed: {}",
            json()
        );
        pipeline(proxy.port, 20_000);
        // Two trend samples with traffic between them: the charts have a line.
        assert!(
            wait_until(Duration::from_secs(15), || json().contains("\"requests_per_second\":{\"master\"")),
            "{runtime:?}: a second trend sample: {}",
            json()
        );
        let body = json();
        let replica_json = body
            .split("\"address\":")
            .find(|part| part.starts_with(&format!("\"127.0.0.1:{}\"", replica.port)))
            .unwrap_or_else(|| panic!("the replica in {body}"))
            .to_string();
        assert!(replica_json.contains("\"replication\":\"syncing\""), "{runtime:?}: {replica_json}");
        assert!(replica_json.contains("\"no_reads_because\":\"syncing: "), "{runtime:?}: {replica_json}");
        assert!(replica_json.contains("\"lag_seconds\":null"), "{runtime:?}: no negative lag: {replica_json}");

        // A steady load while the page is read: its rate is of the last seconds.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (stop, port) = (stop.clone(), proxy.port);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    pipeline(port, 200);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        let url = format!("http://127.0.0.1:{status_port}/");
        let dom = chromium_dom(&url);
        stop.store(true, Ordering::Relaxed);
        load.join().expect("the load");
        let row = format!("<td>127.0.0.1:{}</td><td>replica</td><td class=\"warn\">syncing</td>", replica.port);
        assert!(dom.contains(&row), "{runtime:?}: the replica's row says syncing:\n{dom}");
        assert!(dom.contains("<td>no reads: syncing: its initial sync with the master has not finished</td>"), "{dom}");
        assert!(!dom.contains("-1 s"), "{runtime:?}: never a negative lag:\n{dom}");
        // The rate is there at once, not `-` until the page has refreshed.
        let rate = dom.split("requests/s: ").nth(1).and_then(|rest| rest.split('<').next()).unwrap_or("");
        assert!(rate.parse::<u64>().is_ok_and(|r| r > 0), "{runtime:?}: requests/s is {rate:?}:\n{dom}");
        for chart in ["chart-requests", "chart-latency", "chart-held", "chart-lag"] {
            assert!(dom.contains(&format!("<svg id=\"{chart}\" class=\"chart\"")), "{runtime:?}: {chart}:\n{dom}");
        }
        assert!(dom.contains("<polyline class=\"series\" stroke=\"#1f6fd1\""), "{runtime:?}: a master line:\n{dom}");
        assert!(dom.contains("data-series=\"p99\""), "{runtime:?}: a latency line:\n{dom}");
        assert!(!dom.contains("<script src") && !dom.contains("https://"), "no external asset");

        let dir = scratch_dir("status-screenshot");
        let png = dir.join(format!("status-{runtime:?}.png"));
        chromium_screenshot(&url, &png, 1400, 1100);
        let bytes = std::fs::read(&png).expect("the screenshot");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{runtime:?}: a PNG");
        assert!(bytes.len() > 20_000, "{runtime:?}: a page with charts, not a blank one ({} bytes)", bytes.len());
        if let Ok(keep) = std::env::var("STATUS_SCREENSHOT_DIR") {
            let _ = std::fs::copy(&png, std::path::Path::new(&keep).join(png.file_name().expect("a name")));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
