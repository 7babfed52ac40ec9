//! Issue 12, parts 1-3 end to end: servers that want a password (`requirepass`) or an ACL user, clients that must
//! authenticate at the proxy, and protected mode; both runtimes, against real `redis-server`s.

use redis_proxy_tests::cluster::CONVERGE;
use redis_proxy_tests::{binary, bulk, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The servers' password: distinctive, so that finding it in a log is never a coincidence.
const SERVER_PW: &str = "backend-Secret-7f3a";
/// The ACL user the proxy logs in as.
const ACL_USER: &str = "proxyuser";

/// How the servers of a test want the proxy to log in.
#[derive(Clone, Copy, Debug)]
enum Protection {
    /// `requirepass`: `AUTH password`.
    RequirePass,
    /// An ACL user, the default user disabled: `AUTH user password`.
    AclUser,
}

impl Protection {
    /// The arguments every server gets.
    fn server_args(self) -> Vec<String> {
        let password = format!(">{SERVER_PW}");
        let words: Vec<&str> = match self {
            Protection::RequirePass => vec!["--requirepass", SERVER_PW],
            Protection::AclUser => {
                vec!["--user", "default", "off", "--user", ACL_USER, "on", &password, "~*", "&*", "+@all"]
            }
        };
        words.into_iter().map(str::to_string).collect()
    }

    /// The arguments a replica started by the test also gets, to sync from its first master.
    fn replica_args(self) -> Vec<String> {
        let mut args = self.server_args();
        if let Protection::AclUser = self {
            args.extend(["--masteruser".to_string(), ACL_USER.to_string()]);
        }
        args.extend(["--masterauth".to_string(), SERVER_PW.to_string()]);
        args
    }

    /// The `AUTH` arguments that log in.
    fn auth(self) -> Vec<&'static str> {
        match self {
            Protection::RequirePass => vec![SERVER_PW],
            Protection::AclUser => vec![ACL_USER, SERVER_PW],
        }
    }
}

/// A master and `replicas` replicas of it, all protected, replicas synced.
fn protected_cluster(protection: Protection, replicas: usize) -> Vec<RedisServer> {
    let args = protection.server_args();
    let master = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut servers = vec![master];
    let port = servers[0].port.to_string();
    for _ in 0..replicas {
        let mut args = vec!["--replicaof".to_string(), "127.0.0.1".to_string(), port.clone()];
        args.extend(protection.replica_args());
        args.extend(["--repl-diskless-sync-delay".to_string(), "0".to_string()]);
        servers.push(RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    let master_port = servers[0].port;
    for replica in &servers[1..] {
        let synced =
            wait_until(CONVERGE, || role(replica.port, protection) == Some(("slave".into(), Some(master_port), true)));
        assert!(synced, "replica {} did not sync from the protected master", replica.port);
    }
    servers
}

/// A connection straight to a server, logged in.
fn logged_in(port: u16, protection: Protection) -> Option<RespConn> {
    let mut conn = RespConn::try_connect(port, Duration::from_secs(1)).ok()?;
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    args.extend(protection.auth().iter().map(|a| a.as_bytes()));
    (conn.try_call(&args).ok()? == status("OK")).then_some(conn)
}

/// A server's role, its master's port, and whether its link to the master is up.
fn role(port: u16, protection: Protection) -> Option<(String, Option<u16>, bool)> {
    let mut conn = logged_in(port, protection)?;
    let Reply::Bulk(Some(text)) = conn.try_call(&[b"INFO", b"replication"]).ok()? else { return None };
    let text = String::from_utf8_lossy(&text).into_owned();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    let role = field("role")?.to_string();
    let master_port = field("master_port").and_then(|p| p.parse().ok());
    Some((role, master_port, field("master_link_status") == Some("up")))
}

/// The proxy's `server_auth` for `protection`, its password from `source` (a JSON field and value).
fn server_auth(protection: Protection, source: &str) -> String {
    match protection {
        Protection::RequirePass => format!(r#""server_auth": {{{source}}}"#),
        Protection::AclUser => format!(r#""server_auth": {{"username": "{ACL_USER}", {source}}}"#),
    }
}

/// Writes `text` to a file of its own and returns its path.
fn secret_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("redis-proxy-auth-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write secret file");
    path.to_str().expect("utf-8 temp path").to_string()
}

fn assert_no_secret(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!log.contains(secret), "the log shows a password ({secret}):\n{log}");
    }
}

/// Waits until a write through the proxy succeeds.
fn wait_for_write(proxy: &Proxy) {
    let ok = wait_until(CONVERGE, || {
        RespConn::try_connect(proxy.port, Duration::from_secs(5))
            .and_then(|mut c| c.try_call(&[b"SET", b"probe-write", b"1"]))
            .is_ok_and(|r| r == status("OK"))
    });
    assert!(ok, "writes did not resume through the proxy; its log:\n{}", proxy.log());
}

/// Requests, transactions on private connections (cleaned with RESET, then logged in again for the next client),
/// a failover with re-pointing, and the old master re-attached (it gets `masterauth` from the proxy: it was
/// started without one).
fn basics_and_failover(runtime: Runtime, protection: Protection) {
    let mut servers = protected_cluster(protection, 2);
    let all: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let file = secret_file(&format!("{runtime:?}-{protection:?}"), &format!("{SERVER_PW}\n"));
    let auth = server_auth(protection, &format!(r#""password_file": "{file}""#));
    let proxy = Proxy::start(runtime, &all, &format!(r#""check_period": 100, {auth}"#));

    let mut conn = proxy.connect();
    assert_eq!(conn.call(&[b"SET", b"k", b"v"]), status("OK"), "{}", proxy.log());
    assert_eq!(conn.call(&[b"GET", b"k"]), bulk(b"v"));
    for round in 0..3 {
        // Each transaction takes a private connection; the second and third reuse the first one after its
        // RESET, which logged it out.
        let mut client = proxy.connect();
        assert_eq!(client.call(&[b"MULTI"]), status("OK"));
        assert_eq!(client.call(&[b"INCR", b"counter"]), status("QUEUED"));
        assert_eq!(client.call(&[b"EXEC"]), Reply::Array(Some(vec![Reply::Int(round + 1)])), "{}", proxy.log());
        drop(client);
        std::thread::sleep(Duration::from_millis(50));
    }

    servers[0].kill();
    wait_for_write(&proxy);
    let converged = || {
        let masters: Vec<u16> =
            all[1..].iter().copied().filter(|p| role(*p, protection).is_some_and(|r| r.0 == "master")).collect();
        let [master] = masters[..] else { return None };
        all[1..]
            .iter()
            .all(|p| *p == master || role(*p, protection) == Some(("slave".into(), Some(master), true)))
            .then_some(master)
    };
    assert!(wait_until(CONVERGE, || converged().is_some()), "replicas did not converge; log:\n{}", proxy.log());
    let new_master = converged().unwrap();
    assert_eq!(conn.call(&[b"SET", b"after", b"1"]), status("OK"));
    let mut direct = logged_in(new_master, protection).unwrap();
    assert_eq!(direct.call(&[b"GET", b"after"]), bulk(b"1"));

    servers[0].restart();
    let rejoined = wait_until(CONVERGE, || role(all[0], protection) == Some(("slave".into(), Some(new_master), true)));
    assert!(rejoined, "the old master did not re-attach and sync; log:\n{}", proxy.log());
    assert_no_secret(&proxy.log(), &[SERVER_PW]);
    let _ = std::fs::remove_file(file);
}

#[test]
fn requirepass_servers_basics_failover_and_re_attachment() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        basics_and_failover(runtime, Protection::RequirePass);
    }
}

#[test]
fn acl_user_servers_basics_failover_and_re_attachment() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        basics_and_failover(runtime, Protection::AclUser);
    }
}

#[test]
fn reads_go_to_a_protected_replica_with_credentials_from_the_environment() {
    let _serial = redis_proxy_tests::exclusive();
    // Read by the proxies this test starts (the variable is this test's own).
    std::env::set_var("REDIS_PROXY_AUTH_TEST_PW", SERVER_PW);
    for &runtime in Runtime::ALL {
        let servers = protected_cluster(Protection::AclUser, 1);
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let auth = server_auth(Protection::AclUser, r#""password_env": "REDIS_PROXY_AUTH_TEST_PW""#);
        let proxy = Proxy::start(runtime, &ports, &format!(r#""mode": "readsToSlaves", "check_period": 100, {auth}"#));
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"r", b"1"]), status("OK"), "{}", proxy.log());
        let replica_gets = || {
            let mut direct = logged_in(ports[1], Protection::AclUser).unwrap();
            let Reply::Bulk(Some(stats)) = direct.call(&[b"INFO", b"commandstats"]) else { return 0 };
            let stats = String::from_utf8_lossy(&stats).into_owned();
            let line = stats.lines().find(|l| l.starts_with("cmdstat_get:")).unwrap_or("");
            line.split([':', ',']).find_map(|kv| kv.strip_prefix("calls=")?.parse::<u64>().ok()).unwrap_or(0)
        };
        let read_on_replica = wait_until(CONVERGE, || {
            let mut reader = proxy.connect();
            (0..20).all(|_| reader.call(&[b"GET", b"r"]) == bulk(b"1")) && replica_gets() > 0
        });
        assert!(read_on_replica, "reads did not reach the protected replica; log:\n{}", proxy.log());
        assert_no_secret(&proxy.log(), &[SERVER_PW]);
    }
}

#[test]
fn without_credentials_or_with_wrong_ones_the_log_says_why_nothing_works() {
    let _serial = redis_proxy_tests::exclusive();
    for &runtime in Runtime::ALL {
        let servers = protected_cluster(Protection::RequirePass, 1);
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        for (auth, reply) in [("", "-NOAUTH"), (r#", "server_auth": {"password": "not-the-password"}"#, "-WRONGPASS")] {
            let proxy = Proxy::start(runtime, &ports, &format!(r#""check_period": 100, "hold_ms": 300{auth}"#));
            let explained = wait_until(CONVERGE, || {
                let log = proxy.log();
                log.contains("refuses the proxy's credentials") && log.contains(reply) && log.contains("server_auth")
            });
            assert!(explained, "{runtime:?}: the log does not say why nothing works:\n{}", proxy.log());
            let mut conn = proxy.connect();
            assert!(matches!(conn.call(&[b"GET", b"k"]), Reply::Error(_)), "nothing is routed to a server refusing it");
            std::thread::sleep(Duration::from_millis(500));
            let log = proxy.log();
            assert_eq!(log.matches("refuses the proxy's credentials").count(), ports.len(), "once per server:\n{log}");
            assert!(!log.contains("is down"), "a server refusing the credentials is not down:\n{log}");
            assert!(!log.contains("failover"), "and nothing fails over:\n{log}");
            assert_no_secret(&log, &["not-the-password"]);
        }
    }
}

const DEFAULT_PW: &str = "client-Pass-19c2";
const READER_PW: &str = "reader-Pass-88e1";
const OPS_PW: &str = "ops-Pass-5d07";

/// A proxy whose clients must log in as `default` (its password from a file), `reader` (read-only, given as its
/// SHA-256) or `ops` (admin).
fn proxy_with_users(runtime: Runtime, master: &RedisServer, file: &str) -> Proxy {
    let reader_sha256 = sha256_hex(READER_PW);
    let users = format!(
        r#""client_users": [{{"name": "default", "password_file": "{file}"}},
                            {{"name": "reader", "password_sha256": "{reader_sha256}", "readonly": true}},
                            {{"name": "ops", "password": "{OPS_PW}", "admin": true}}]"#
    );
    Proxy::start(runtime, &[master.port], &users)
}

/// The hex SHA-256 of `text`, from `sha256sum` (as an operator would make it).
fn sha256_hex(text: &str) -> String {
    let output =
        Command::new("sh").args(["-c", "printf %s \"$1\" | sha256sum", "sh", text]).output().expect("run sha256sum");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().expect("a digest").to_string()
}

fn error(text: &str) -> Reply {
    Reply::Error(text.to_string())
}

#[test]
fn clients_authenticate_at_the_proxy_with_redis_error_texts() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let file = secret_file(&format!("users-{runtime:?}"), &format!("{DEFAULT_PW}\n"));
        let proxy = proxy_with_users(runtime, &master, &file);
        let noauth = error("NOAUTH Authentication required.");
        let wrongpass = error("WRONGPASS invalid username-password pair or user is disabled.");

        let mut conn = proxy.connect();
        for command in
            [&[&b"GET"[..], b"k"][..], &[b"SET", b"k", b"v"], &[b"PING"], &[b"CLIENT", b"ID"], &[b"PROXY", b"STATUS"]]
        {
            assert_eq!(conn.call(command), noauth, "{command:?}");
        }
        let Reply::Error(hello) = conn.call(&[b"HELLO", b"3"]) else { panic!("HELLO without AUTH is refused") };
        assert!(hello.starts_with("NOAUTH HELLO must be called with the client already authenticated"), "{hello}");
        assert_eq!(conn.call(&[b"AUTH", b"wrong"]), wrongpass);
        assert_eq!(conn.call(&[b"AUTH", b"reader", DEFAULT_PW.as_bytes()]), wrongpass);
        assert_eq!(conn.call(&[b"HELLO", b"3", b"AUTH", b"default", b"wrong"]), wrongpass);
        assert_eq!(conn.call(&[b"GET", b"k"]), noauth);
        assert_eq!(conn.call(&[b"AUTH", DEFAULT_PW.as_bytes()]), status("OK"));
        assert_eq!(conn.call(&[b"SET", b"k", b"v"]), status("OK"));
        assert_eq!(conn.call(&[b"GET", b"k"]), bulk(b"v"));
        let Reply::Error(refused) = conn.call(&[b"PROXY", b"STATUS"]) else { panic!("PROXY for a non-admin user") };
        assert!(refused.contains("admin"), "{refused}");
        assert_eq!(conn.call(&[b"QUIT"]), status("OK"));

        let mut quitter = proxy.connect();
        assert_eq!(quitter.call(&[b"QUIT"]), status("OK"), "QUIT needs no login");

        let mut reader = proxy.connect();
        assert_eq!(reader.call(&[b"AUTH", b"reader", READER_PW.as_bytes()]), status("OK"));
        assert_eq!(reader.call(&[b"GET", b"k"]), bulk(b"v"));
        assert_eq!(
            reader.call(&[b"SET", b"k", b"x"]),
            error("NOPERM User reader has no permissions to run the 'set' command")
        );
        assert_eq!(reader.call(&[b"MULTI"]), status("OK"));
        assert!(matches!(reader.call(&[b"DEL", b"k"]), Reply::Error(e) if e.starts_with("NOPERM")));
        assert!(matches!(reader.call(&[b"EXEC"]), Reply::Error(e) if e.starts_with("EXECABORT")));

        let mut ops = proxy.connect();
        let Reply::Array(Some(hello)) = ops.call(&[b"HELLO", b"2", b"AUTH", b"ops", OPS_PW.as_bytes()]) else {
            panic!("HELLO with AUTH logs in and answers as Redis does")
        };
        assert!(hello.contains(&bulk(b"proto")), "{hello:?}");
        assert!(matches!(ops.call(&[b"PROXY", b"STATUS"]), Reply::Bulk(Some(_))), "an admin user may send PROXY");

        // A client's AUTH never reaches the server.
        let mut direct = master.connect();
        let Reply::Bulk(Some(stats)) = direct.call(&[b"INFO", b"commandstats"]) else { panic!("INFO") };
        assert!(!String::from_utf8_lossy(&stats).contains("cmdstat_auth"), "AUTH reached the server");
        assert_no_secret(&proxy.log(), &[DEFAULT_PW, READER_PW, OPS_PW]);
        let _ = std::fs::remove_file(file);
    }
}

/// `tests/clients/node` in the source tree (its `node_modules` are installed by `.ci/run`).
fn node_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join("node")
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?} (.ci/run installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

const REDIS_PY: &str = r#"
import os, redis
port, proto = int(os.environ["PORT"]), int(os.environ["PROTO"])
r = redis.Redis(port=port, password=os.environ["PW"], protocol=proto)
assert r.set("py-auth", "1") and r.get("py-auth") == b"1"
try:
    redis.Redis(port=port, password="wrong", protocol=proto).ping()
    raise SystemExit("a wrong password was accepted")
except redis.exceptions.AuthenticationError:
    pass
ro = redis.Redis(port=port, username="reader", password=os.environ["RO"], protocol=proto)
assert ro.get("py-auth") == b"1"
try:
    ro.set("py-auth", "2")
    raise SystemExit("a read-only user wrote")
except redis.exceptions.NoPermissionError as e:
    assert "no permissions to run the 'set' command" in str(e), e
print("ok")
"#;

const IOREDIS: &str = r#"
const Redis = require("ioredis");
const port = Number(process.env.PORT);
(async () => {
  const r = new Redis({ port, password: process.env.PW, maxRetriesPerRequest: 0 });
  await r.set("io-auth", "1");
  if ((await r.get("io-auth")) !== "1") throw new Error("GET");
  const bad = new Redis({ port, password: "wrong", maxRetriesPerRequest: 0, retryStrategy: () => null });
  let refused = "";
  bad.on("error", (e) => { refused += e.message; });
  try { await bad.ping(); } catch (e) { refused += e.message; }
  if (!/WRONGPASS|NOAUTH/.test(refused)) throw new Error("a wrong password was accepted: " + refused);
  r.disconnect(); bad.disconnect();
  console.log("ok");
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn redis_py_ioredis_and_redis_cli_log_in_with_the_right_password() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let file = secret_file(&format!("clients-{runtime:?}"), DEFAULT_PW);
        let proxy = proxy_with_users(runtime, &master, &file);
        let port = proxy.port.to_string();
        for proto in ["2", "3"] {
            let mut python = Command::new("python3");
            python.args(["-c", REDIS_PY]).env("PORT", &port).env("PROTO", proto);
            let out = run(python.env("PW", DEFAULT_PW).env("RO", READER_PW));
            assert_eq!(out.trim(), "ok", "redis-py RESP{proto}");
        }
        let mut node = Command::new("node");
        node.args(["-e", IOREDIS]).current_dir(node_dir()).env("PORT", &port).env("PW", DEFAULT_PW);
        assert_eq!(run(&mut node).trim(), "ok", "ioredis");

        let cli = |args: &[&str]| {
            run(Command::new("redis-cli").args(["-p", &port, "--no-auth-warning"]).args(args)).trim().to_string()
        };
        assert_eq!(cli(&["-a", DEFAULT_PW, "SET", "cli", "1"]), "OK");
        assert_eq!(cli(&["-a", DEFAULT_PW, "GET", "cli"]), "1");
        assert!(cli(&["GET", "cli"]).contains("NOAUTH Authentication required."));
        let readonly = cli(&["--user", "reader", "--pass", READER_PW, "SET", "cli", "2"]);
        assert!(readonly.contains("NOPERM User reader has no permissions to run the 'set' command"), "{readonly}");
        assert_no_secret(&proxy.log(), &[DEFAULT_PW, READER_PW, OPS_PW]);
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn protected_mode_refuses_an_open_listener_without_client_users_and_check_shows_no_secret() {
    let dir = std::env::temp_dir().join(format!("redis-proxy-auth-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let open = write("open.json", r#"{"servers": [{"port": 6379}], "bind_address": "0.0.0.0", "listen_port": 1}"#);
    let unprotected = write(
        "unprotected.json",
        r#"{"servers": [{"port": 6379}], "bind_address": "0.0.0.0", "protected_mode": false}"#,
    );
    let with_secrets = write(
        "secrets.json",
        &format!(
            r#"{{"servers": [{{"port": 6379}}], "bind_address": "0.0.0.0", "server_auth": {{"password": "{SERVER_PW}"}},
                 "client_users": [{{"name": "default", "password": "{DEFAULT_PW}"}}]}}"#
        ),
    );
    let missing =
        write("missing.json", r#"{"servers": [{"port": 6379}], "server_auth": {"password_file": "/nonexistent/pw"}}"#);
    for &runtime in Runtime::ALL {
        let proxy = |args: &[&str]| Command::new(binary(runtime)).args(args).output().expect("run the proxy");
        for args in [&["--check", open.as_str()][..], &[open.as_str()]] {
            let output = proxy(args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("protected mode") && stderr.contains("client_users"), "{stderr}");
        }
        assert!(proxy(&["--check", &unprotected]).status.success());
        let output = proxy(&["--check", &with_secrets]);
        let printed = [output.stdout, output.stderr].concat();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&printed));
        assert_no_secret(&String::from_utf8_lossy(&printed), &[SERVER_PW, DEFAULT_PW]);
        let output = proxy(&["--check", &missing]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr.contains("cannot read password file /nonexistent/pw"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
