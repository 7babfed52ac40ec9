//! When a server cannot be used, the proxy says why: to the client (the `MASTERDOWN` of a held request ends with
//! the last reason per server), in the log (one line in plain words), and before start (`--probe`). Also: a TLS
//! server whose self-signed certificate is listed in `server_tls.ca_file` itself is accepted (pinned), as
//! OpenSSL clients accept it. `--probe` in Sentinel mode asks the sentinels first. Both runtimes.

use redis_proxy_tests::sentinel::{sentinel_section, Sentinel};
use redis_proxy_tests::tls::Certs;
use redis_proxy_tests::{
    bulk, exclusive, proxy_binary, scratch_dir, status, wait_until, Proxy, RedisServer, Reply, Runtime,
};
use std::process::Command;
use std::time::Duration;

/// Short probes and a short hold, so that a held request fails within a few seconds.
const QUICK: &str = r#""check_period": 100, "hold_ms": 1500"#;

/// The `"server_tls"` field trusting `ca_file` (a file of the certificates' directory).
fn server_tls(certs: &Certs, ca_file: &str) -> String {
    format!(r#""server_tls": {{"ca_file": "{}"}}"#, certs.path(ca_file))
}

/// Runs `binary --probe` on a config of `fields` (JSON object members); its exit code and what it printed.
fn probe(runtime: Runtime, fields: &str) -> (Option<i32>, String) {
    let dir = scratch_dir("probe");
    let path = dir.join("config.json");
    std::fs::write(&path, format!("{{{fields}}}")).expect("write config");
    let output = Command::new(proxy_binary(runtime)).arg("--probe").arg(&path).output().expect("run --probe");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// The `"servers"` field for these ports on 127.0.0.1.
fn servers(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(|p| format!(r#"{{"host": "127.0.0.1", "port": {p}}}"#)).collect();
    format!(r#""servers": [{}]"#, list.join(", "))
}

/// Sends a write through the proxy and returns the error it gets once its hold is over.
fn held_error(proxy: &Proxy) -> String {
    match proxy.connect().try_call(&[b"SET", b"k", b"v"]) {
        Ok(Reply::Error(error)) => error,
        other => panic!("a held write gets an error, got {other:?}; log:\n{}", proxy.log()),
    }
}

/// How many lines of the proxy's log contain `words`.
fn lines_with(proxy: &Proxy, words: &str) -> usize {
    proxy.log().lines().filter(|line| line.contains(words)).count()
}

#[test]
fn a_pinned_self_signed_server_certificate_is_accepted_and_a_ca_signed_one_still_verifies() {
    let _serial = exclusive();
    let certs = Certs::generate("pinned");
    certs.self_signed("pinned");
    // One file with both: the pinned certificate and the CA of the other server.
    let bundle = std::fs::read_to_string(certs.path("pinned.crt")).expect("pinned.crt")
        + &std::fs::read_to_string(certs.path("ca.crt")).expect("ca.crt");
    std::fs::write(certs.dir.join("bundle.crt"), bundle).expect("write bundle");
    for &runtime in Runtime::ALL {
        let pinned = RedisServer::start_tls_with(&certs, "pinned", "pinned.crt", &[]);
        // As redis-cli accepts it with that certificate as its CA file ...
        let cli = Command::new("redis-cli")
            .args(["--tls", "--cacert", &certs.path("pinned.crt"), "-h", "127.0.0.1", "-p"])
            .arg(pinned.port.to_string())
            .arg("PING")
            .output()
            .expect("run redis-cli");
        assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "PONG", "redis-cli accepts the pinned server");
        // ... so does the proxy.
        let proxy = Proxy::start(runtime, &[pinned.port], &format!("{QUICK}, {}", server_tls(&certs, "pinned.crt")));
        let mut conn = proxy.connect();
        assert!(
            wait_until(Duration::from_secs(10), || conn.call(&[b"SET", b"pin", b"1"]) == status("OK")),
            "{runtime:?}: the pinned server is used: {}",
            proxy.log()
        );
        assert_eq!(conn.call(&[b"GET", b"pin"]), bulk(b"1"));
        assert!(!proxy.log().contains("CaUsedAsEndEntity"), "{runtime:?}: {}", proxy.log());
        let (code, text) =
            probe(runtime, &format!("{}, {}", servers(&[pinned.port]), server_tls(&certs, "pinned.crt")));
        assert_eq!(code, Some(0), "{runtime:?}: {text}");
        assert!(text.contains(&format!("127.0.0.1:{}  reachable  TLS ok  no auth  master", pinned.port)), "{text}");
        drop(proxy);
        // A CA-signed server, with the bundle as ca_file: verified by its CA as before.
        let signed = RedisServer::start_tls(&certs, &[]);
        let proxy = Proxy::start(runtime, &[signed.port], &format!("{QUICK}, {}", server_tls(&certs, "bundle.crt")));
        let mut conn = proxy.connect();
        assert!(
            wait_until(Duration::from_secs(10), || conn.call(&[b"SET", b"ca", b"1"]) == status("OK")),
            "{runtime:?}: the CA-signed server is used: {}",
            proxy.log()
        );
    }
}

#[test]
fn an_expired_certificate_is_named_to_the_client_in_the_log_and_by_probe() {
    let _serial = exclusive();
    let certs = Certs::generate("expired");
    certs.signed("expired", "DNS:localhost,IP:127.0.0.1", Some(("20200101000000Z", "20200102000000Z")));
    for &runtime in Runtime::ALL {
        let server = RedisServer::start_tls_with(&certs, "expired", "ca.crt", &[]);
        let fields = format!("{QUICK}, {}", server_tls(&certs, "ca.crt"));
        let proxy = Proxy::start(runtime, &[server.port], &fields);
        let error = held_error(&proxy);
        assert_eq!(
            error,
            format!(
                "MASTERDOWN no master is available: redis-proxy held the request for 1500 ms (127.0.0.1:{}: TLS \
                 certificate refused (expired))",
                server.port
            ),
            "{runtime:?}"
        );
        let words = "its certificate expired on 2020-01-02 00:00:00 UTC";
        assert_eq!(lines_with(&proxy, words), 1, "{runtime:?}: one line in plain words:\n{}", proxy.log());
        assert!(proxy.log().contains("give the server a renewed certificate"), "{}", proxy.log());
        assert!(!proxy.log().contains("OtherError"), "{runtime:?}: no rustls debug text:\n{}", proxy.log());
        assert!(
            wait_until(Duration::from_secs(5), || proxy.log().contains(&format!(
                "server 127.0.0.1:{} is down: TLS refused: no valid reply for down_after because the proxy refuses \
                 its certificate (expired)",
                server.port
            ))),
            "{runtime:?}: the down line names the evidence:\n{}",
            proxy.log()
        );
        let (code, text) = probe(runtime, &format!("{}, {}", servers(&[server.port]), server_tls(&certs, "ca.crt")));
        assert_eq!(code, Some(1), "{runtime:?}: no usable master: {text}");
        assert!(text.contains(&format!("127.0.0.1:{}  reachable  TLS refused: {words}", server.port)), "{text}");
        assert!(text.contains("NO MASTER"), "{text}");
    }
}

#[test]
fn a_certificate_for_another_name_is_named_with_the_names_it_has() {
    let _serial = exclusive();
    let certs = Certs::generate("wrong-name");
    certs.signed("other", "DNS:other.example", None);
    for &runtime in Runtime::ALL {
        let server = RedisServer::start_tls_with(&certs, "other", "ca.crt", &[]);
        let proxy = Proxy::start(runtime, &[server.port], &format!("{QUICK}, {}", server_tls(&certs, "ca.crt")));
        let error = held_error(&proxy);
        assert!(
            error.starts_with("MASTERDOWN no master is available")
                && error.ends_with(&format!(
                    "(127.0.0.1:{}: TLS certificate refused (not valid for this name))",
                    server.port
                )),
            "{runtime:?}: {error}"
        );
        assert!(!error.contains("other.example"), "no certificate content in the client's error: {error}");
        let words = "its certificate is not valid for the name 127.0.0.1: it names DNS:other.example.";
        assert_eq!(lines_with(&proxy, words), 1, "{runtime:?}: one line in plain words:\n{}", proxy.log());
        let (code, text) = probe(runtime, &format!("{}, {}", servers(&[server.port]), server_tls(&certs, "ca.crt")));
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{}  reachable  TLS refused: {words}", server.port)), "{text}");
    }
}

#[test]
fn a_wrong_password_and_a_stopped_server_are_named_side_by_side() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut stopped = RedisServer::start();
        let guarded = RedisServer::start_with(&["--requirepass", "right-secret"]);
        let auth = r#""server_auth": {"password": "wrong-secret"}"#;
        let proxy = Proxy::start(runtime, &[stopped.port, guarded.port], &format!("{QUICK}, {auth}"));
        let mut conn = proxy.connect();
        assert!(
            wait_until(Duration::from_secs(10), || conn.call(&[b"SET", b"k", b"v"]) == status("OK")),
            "{runtime:?}: the server without a password is the master: {}",
            proxy.log()
        );
        stopped.kill();
        let refused = format!("server 127.0.0.1:{} is down: refused: a connection to it was refused", stopped.port);
        assert!(wait_until(Duration::from_secs(5), || proxy.log().contains(&refused)), "{runtime:?}: {}", proxy.log());
        let error = held_error(&proxy);
        assert!(
            error.starts_with("MASTERDOWN no master is available")
                && error.ends_with(&format!(
                    "(127.0.0.1:{}: refused; 127.0.0.1:{}: WRONGPASS)",
                    stopped.port, guarded.port
                )),
            "{runtime:?}: {error}\n{}",
            proxy.log()
        );
        assert!(!error.contains("secret"), "no secret in the client's error: {error}");
        assert!(!proxy.log().contains("wrong-secret"), "no secret in the log");
        assert_eq!(lines_with(&proxy, &refused), 1, "{runtime:?}:\n{}", proxy.log());
        let credentials = format!("server 127.0.0.1:{} refuses the proxy's credentials (-WRONGPASS", guarded.port);
        assert_eq!(lines_with(&proxy, &credentials), 1, "{runtime:?}:\n{}", proxy.log());
        let (code, text) = probe(runtime, &format!("{}, {auth}", servers(&[stopped.port, guarded.port])));
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{}  refused: nothing listens there", stopped.port)), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{}  reachable  plain TCP  auth refused: WRONGPASS", guarded.port)),
            "{text}"
        );
        assert!(!text.contains("secret"), "no secret in the probe's output: {text}");
    }
}

#[test]
fn probe_of_a_healthy_tls_setup_with_credentials_says_what_each_server_is() {
    let _serial = exclusive();
    let certs = Certs::generate("probe");
    for &runtime in Runtime::ALL {
        let secret = ["--requirepass", "s3cret", "--masterauth", "s3cret"];
        let master = RedisServer::start_tls(&certs, &secret);
        let port = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", port.as_str()];
        replica_args.extend_from_slice(&secret);
        let replica = RedisServer::start_tls(&certs, &replica_args);
        assert!(
            wait_until(Duration::from_secs(10), || {
                certs
                    .cli(replica.port, &["-a", "s3cret", "--no-auth-warning"], &["INFO", "replication"])
                    .1
                    .contains("master_link_status:up")
            }),
            "the replica syncs"
        );
        let fields = format!(
            r#"{}, {}, "server_auth": {{"password": "s3cret"}}"#,
            servers(&[master.port, replica.port]),
            server_tls(&certs, "ca.crt")
        );
        let (code, text) = probe(runtime, &fields);
        assert_eq!(code, Some(0), "{runtime:?}: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "one line per server and the verdict: {text}");
        let master_line =
            format!("127.0.0.1:{}  reachable  TLS ok  auth ok  master  1 replica(s)  offset ", master.port);
        assert!(lines[0].starts_with(&master_line) && lines[0].contains("  redis 7."), "{text}");
        let replica_line = format!(
            "127.0.0.1:{}  reachable  TLS ok  auth ok  replica of 127.0.0.1:{}  link up  offset ",
            replica.port, master.port
        );
        assert!(lines[1].starts_with(&replica_line), "{text}");
        assert_eq!(lines[2], format!("OK: 127.0.0.1:{} is usable as master", master.port));
        assert!(!text.contains("s3cret"), "no secret printed");
    }
}

#[test]
fn probe_in_sentinel_mode_asks_every_sentinel_then_probes_the_master_they_name() {
    let _serial = exclusive();
    let master = RedisServer::start();
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
    let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
    for &runtime in Runtime::ALL {
        let (code, text) = probe(runtime, &sentinel_section(&ports, ""));
        assert_eq!(code, Some(0), "{runtime:?}: {text}");
        for port in &ports {
            let line = format!(
                "sentinel 127.0.0.1:{port}  reachable  plain TCP  no auth  names master 127.0.0.1:{}",
                master.port
            );
            assert!(text.contains(&line), "{runtime:?}: {text}");
        }
        assert!(text.contains(&format!("127.0.0.1:{}  reachable  plain TCP  no auth  master", master.port)), "{text}");
        assert!(text.contains(&format!("OK: a majority of the sentinels names 127.0.0.1:{}", master.port)), "{text}");
        // A name they do not monitor: no master.
        let unknown = sentinel_section(&ports, "").replace("\"mymaster\"", "\"nosuch\"");
        let (code, text) = probe(runtime, &unknown);
        assert_eq!(code, Some(1), "{runtime:?}: {text}");
        assert!(text.contains("does not know the master name \"nosuch\"") && text.contains("NO MASTER"), "{text}");
    }
}
