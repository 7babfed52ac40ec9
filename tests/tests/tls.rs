//! Issue 12, part 4: TLS on both sides, through both runtimes, with certificates made by `openssl` for each test:
//! clients over TLS (`redis-cli --tls`, redis-py `ssl=True`, client certificates required or not), the proxy over
//! TLS to redis-servers that listen with TLS only (failover included), handshake failures that are logged and
//! survived, `--check` naming an unusable file, and certificates re-read on SIGHUP.

use redis_proxy_tests::tls::Certs;
use redis_proxy_tests::{bulk, exclusive, free_port, proxy_binary, status, wait_until, Proxy, RedisServer, Runtime};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The `"tls"` config field for a TLS listener on `port` with `certs`' server certificate.
fn client_tls(certs: &Certs, port: u16, client_ca: bool) -> String {
    let ca = if client_ca { format!(r#", "client_ca_file": "{}""#, certs.path("ca.crt")) } else { String::new() };
    format!(
        r#""tls": {{"port": {port}, "cert_file": "{}", "key_file": "{}"{ca}}}"#,
        certs.path("server.crt"),
        certs.path("server.key")
    )
}

/// The `"server_tls"` config field trusting `certs`' CA.
fn server_tls(certs: &Certs) -> String {
    format!(r#""server_tls": {{"ca_file": "{}"}}"#, certs.path("ca.crt"))
}

#[test]
fn redis_cli_and_redis_py_over_tls_get_right_answers() {
    let certs = Certs::generate("clients");
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let tls_port = free_port();
        let proxy = Proxy::start(runtime, &[master.port], &client_tls(&certs, tls_port, false));
        assert_eq!(certs.call(tls_port, &["SET", "tls:k", "v\u{e9}"]), "OK", "{runtime:?}");
        assert_eq!(certs.call(tls_port, &["GET", "tls:k"]), "v\u{e9}", "{runtime:?}");
        assert_eq!(certs.call(tls_port, &["INCRBY", "tls:n", "41"]), "41");
        // It went through the proxy to the server, and the plain listener serves the same data beside it.
        assert_eq!(master.connect().call(&[b"GET", b"tls:n"]), bulk(b"41"));
        assert_eq!(proxy.connect().call(&[b"GET", b"tls:k"]), bulk("v\u{e9}".as_bytes()));
        // A pipeline of 10,000 commands over TLS (`--pipe`): every reply, in order.
        let script: String = (0..10_000).map(|i| format!("SET tls:p{i} {i}\r\n")).collect();
        let path = certs.dir.join("pipe.txt");
        std::fs::write(&path, script).expect("write pipe input");
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli --tls --cacert {} -h 127.0.0.1 -p {tls_port} --pipe < {}",
                certs.path("ca.crt"),
                path.display()
            ))
            .output()
            .expect("run redis-cli --pipe");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("errors: 0, replies: 10000"), "{runtime:?}: {text}");
        assert_eq!(master.connect().call(&[b"GET", b"tls:p9999"]), bulk(b"9999"));
        // redis-py with ssl=True: sync RESP2 and RESP3, asyncio, pipelines, MULTI, a 1 MiB value.
        let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/py/tls_check.py");
        let output = Command::new("python3")
            .arg(&py)
            .args([&tls_port.to_string(), &certs.path("ca.crt")])
            .output()
            .expect("run python3 (apt-get install python3; pip install redis)");
        let out = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && out.contains("ok"), "{runtime:?}: redis-py over TLS: {out}");
        // Bytes that are not TLS on the TLS port: logged, closed, and the proxy goes on.
        let mut raw = redis_proxy_tests::RespConn::connect(tls_port);
        raw.send(&[b"PING"]);
        assert!(raw.is_closed_by_peer(), "{runtime:?}: plain RESP on the TLS port is closed");
        assert!(
            wait_until(Duration::from_secs(5), || proxy.log().contains("TLS with client 127.0.0.1:")),
            "{runtime:?}: the failed handshake is logged: {}",
            proxy.log()
        );
        assert_eq!(certs.call(tls_port, &["GET", "tls:k"]), "v\u{e9}", "{runtime:?}: still serving");
    }
}

#[test]
fn client_certificates_are_required_when_client_ca_file_is_set() {
    let certs = Certs::generate("mtls");
    let other = Certs::generate("mtls-other");
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let tls_port = free_port();
        let proxy = Proxy::start(runtime, &[master.port], &client_tls(&certs, tls_port, true));
        let with_cert = ["--cert", &certs.path("client.crt"), "--key", &certs.path("client.key")];
        let (ok, text) = certs.cli(tls_port, &with_cert, &["SET", "mtls", "yes"]);
        assert!(ok && text == "OK", "{runtime:?}: a client with a certificate works: {text}");
        // Without a certificate, or with one another CA signed: refused.
        let (_, text) = certs.cli(tls_port, &[], &["GET", "mtls"]);
        assert!(!text.contains("yes"), "{runtime:?}: a client without a certificate must be refused: {text}");
        let foreign = ["--cert", &other.path("client.crt"), "--key", &other.path("client.key")];
        let (_, text) = certs.cli(tls_port, &foreign, &["GET", "mtls"]);
        assert!(!text.contains("yes"), "{runtime:?}: a certificate of another CA must be refused: {text}");
        assert!(
            wait_until(Duration::from_secs(5), || proxy.log().contains("certificate")),
            "{runtime:?}: the refusal is logged with its reason: {}",
            proxy.log()
        );
        let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/py/tls_check.py");
        let output = Command::new("python3")
            .arg(&py)
            .args([&tls_port.to_string(), &certs.path("ca.crt"), &certs.path("client.crt"), &certs.path("client.key")])
            .output()
            .expect("run python3");
        let out = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{runtime:?}: redis-py with a client certificate: {out}");
        assert_eq!(
            certs.call(
                tls_port,
                &["--cert", &certs.path("client.crt"), "--key", &certs.path("client.key"), "GET", "mtls"]
            ),
            "yes"
        );
    }
}

#[test]
fn the_proxy_speaks_tls_to_the_servers_and_fails_over_over_tls() {
    let _serial = exclusive();
    let certs = Certs::generate("servers");
    for &runtime in Runtime::ALL {
        let master = RedisServer::start_tls(&certs, &[]);
        let master_port = master.port.to_string();
        let replica_args = ["--replicaof", "127.0.0.1", master_port.as_str()];
        let replicas = [RedisServer::start_tls(&certs, &replica_args), RedisServer::start_tls(&certs, &replica_args)];
        for replica in &replicas {
            assert!(
                wait_until(Duration::from_secs(10), || {
                    certs.replication_field(replica.port, "master_link_status").as_deref() == Some("up")
                }),
                "replica {} syncs over TLS",
                replica.port
            );
        }
        let mut master = master;
        let ports = [master.port, replicas[0].port, replicas[1].port];
        let extra = format!(r#""check_period": 100, {}"#, server_tls(&certs));
        let proxy = Proxy::start(runtime, &ports, &extra);
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"before", b"1"]), status("OK"), "{runtime:?}: {}", proxy.log());
        assert_eq!(conn.call(&[b"GET", b"before"]), bulk(b"1"));
        assert_eq!(certs.call(master.port, &["GET", "before"]), "1", "the write reached the TLS master");
        // Replication is asynchronous: a SIGKILL before the replicas have the write may lose it, so wait until
        // each replica serves it. (`WAIT` on a fresh redis-cli connection would not do: it counts acknowledgements
        // of that connection's own last write, and a connection that wrote nothing is answered at once.)
        for replica in &replicas {
            assert!(
                wait_until(Duration::from_secs(10), || certs.call(replica.port, &["GET", "before"]) == "1"),
                "replica {} has the write",
                replica.port
            );
        }
        // SIGKILL the master: a replica is promoted over TLS, the other re-pointed at its TLS port.
        master.kill();
        let mut attempts = 0;
        let written = wait_until(Duration::from_secs(15), || {
            attempts += 1;
            matches!(proxy.connect().try_call(&[b"SET", b"after", b"2"]), Ok(reply) if reply == status("OK"))
        });
        assert!(written, "{runtime:?}: writes resume after the failover ({attempts} tries): {}", proxy.log());
        let promoted = replicas
            .iter()
            .find(|r| certs.replication_field(r.port, "role").as_deref() == Some("master"))
            .unwrap_or_else(|| panic!("{runtime:?}: a replica was promoted: {}", proxy.log()));
        let other = replicas.iter().find(|r| r.port != promoted.port).expect("two replicas");
        assert_eq!(certs.call(promoted.port, &["GET", "after"]), "2", "the write went to the promoted replica");
        assert_eq!(certs.call(promoted.port, &["GET", "before"]), "1");
        assert!(
            wait_until(Duration::from_secs(10), || {
                certs.replication_field(other.port, "master_port") == Some(promoted.port.to_string())
                    && certs.replication_field(other.port, "master_link_status").as_deref() == Some("up")
            }),
            "{runtime:?}: the other replica replicates the new master over TLS: {}",
            proxy.log()
        );
        assert!(
            wait_until(Duration::from_secs(10), || certs.call(other.port, &["GET", "after"]) == "2"),
            "the write replicated"
        );
    }
}

#[test]
fn a_failed_tls_handshake_with_a_server_is_a_failed_connect_logged_with_its_reason() {
    let _serial = exclusive();
    let certs = Certs::generate("handshake");
    let stranger = Certs::generate("stranger");
    for &runtime in Runtime::ALL {
        let server = RedisServer::start_tls(&certs, &[]);
        // The proxy trusts another CA: every connection fails its handshake; the server is never usable.
        let proxy =
            Proxy::start(runtime, &[server.port], &format!(r#""check_period": 100, {}"#, server_tls(&stranger)));
        let reply = proxy.connect().try_call(&[b"SET", b"k", b"v"]);
        assert!(
            matches!(reply, Ok(redis_proxy_tests::Reply::Error(_))),
            "{runtime:?}: an error, not a hang: {reply:?}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || {
                let log = proxy.log();
                log.contains(&format!("TLS with server 127.0.0.1:{} failed", server.port))
                    && log.contains("certificate")
            }),
            "{runtime:?}: the log says which server and why: {}",
            proxy.log()
        );
        assert_eq!(proxy.connect().call(&[b"PING"]), status("PONG"), "{runtime:?}: the proxy goes on");
        drop(proxy);
        // insecure_skip_verify accepts the same server.
        let proxy = Proxy::start(runtime, &[server.port], r#""server_tls": {"insecure_skip_verify": true}"#);
        let mut conn = proxy.connect();
        assert!(
            wait_until(Duration::from_secs(10), || conn.call(&[b"SET", b"k", b"v"]) == status("OK")),
            "{runtime:?}: {}",
            proxy.log()
        );
        assert_eq!(certs.call(server.port, &["GET", "k"]), "v");
    }
}

#[test]
fn check_names_the_tls_field_whose_file_is_unusable() {
    let certs = Certs::generate("check");
    let dir = &certs.dir;
    let run = |config: &str| {
        let path = dir.join("config.json");
        std::fs::write(&path, config).expect("write config");
        let output = Command::new(proxy_binary(Runtime::Mio)).arg("--check").arg(&path).output().expect("run --check");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let servers = r#""servers": [{"port": 6379}]"#;
    let good = format!("{{{servers}, {}, {}}}", client_tls(&certs, 6390, true), server_tls(&certs));
    assert_eq!(run(&good).0, Some(0), "{}", run(&good).1);
    let missing = good.replace("server.crt", "missing.crt");
    let (code, text) = run(&missing);
    assert_eq!(code, Some(2));
    assert!(text.contains("`tls.cert_file`") && text.contains("missing.crt"), "{text}");
    let not_a_key = good.replace("server.key", "server.crt");
    let (code, text) = run(&not_a_key);
    assert!(code == Some(2) && text.contains("`tls.key_file`"), "{text}");
    let bad_ca = format!("{{{servers}, \"server_tls\": {{\"ca_file\": \"{}\"}}}}", certs.path("server.key"));
    let (code, text) = run(&bad_ca);
    assert!(code == Some(2) && text.contains("`server_tls.ca_file`"), "{text}");
}

#[test]
fn certificates_are_read_again_on_sighup() {
    let first = Certs::generate("reload-1");
    let second = Certs::generate("reload-2");
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let tls_port = free_port();
        // The proxy reads its certificate from files the test replaces.
        let cert = live_files(&first, "live");
        let config_tls =
            format!(r#""tls": {{"port": {tls_port}, "cert_file": "{}", "key_file": "{}"}}"#, cert.0, cert.1);
        let proxy = Proxy::start(runtime, &[master.port], &config_tls);
        assert_eq!(first.call(tls_port, &["PING"]), "PONG");
        std::fs::copy(second.path("server.crt"), &cert.0).expect("replace the certificate");
        std::fs::copy(second.path("server.key"), &cert.1).expect("replace the key");
        proxy.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(5), || second.cli(tls_port, &[], &["PING"]) == (true, "PONG".to_string())),
            "{runtime:?}: new connections get the new certificate: {}",
            proxy.log()
        );
        let (ok, _) = first.cli(tls_port, &[], &["PING"]);
        assert!(!ok, "{runtime:?}: the old CA no longer verifies the proxy");
        assert!(proxy.log().contains("TLS files re-read"), "{runtime:?}: the reload says so: {}", proxy.log());
    }
}

/// Copies `certs`' server certificate and key to files of their own (`<name>.crt`, `<name>.key`) in its directory.
fn live_files(certs: &Certs, name: &str) -> (String, String) {
    let (crt, key) = (certs.path(&format!("{name}.crt")), certs.path(&format!("{name}.key")));
    std::fs::copy(certs.path("server.crt"), &crt).expect("copy certificate");
    std::fs::copy(certs.path("server.key"), &key).expect("copy key");
    (crt, key)
}
