//! Large values through the proxy: a 64 MiB value set and read back byte-exact while other clients on the same
//! shared connection keep working, a client that reads a large value slowly does not make the proxy hold it
//! (the reply is streamed, and the backend connection is not read while the client does not read), and clients
//! that move large values get shared connections of their own (`large_pool_size`).

use redis_proxy_tests::{bulk, proxy_connections, status, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::io::Read;
use std::time::{Duration, Instant};

const BIG: usize = 64 << 20;

/// A value of `len` bytes with every byte value in it, none at a position that repeats with a power of two.
fn big_value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// The proxy's resident memory in KiB (VmRSS from /proc).
fn rss_kib(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

#[test]
fn a_64_mib_value_goes_through_byte_exact_while_other_clients_share_its_connection() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        // One shared connection, none set aside for large values: the small requests travel on the very
        // connection that carries the large value.
        let proxy = Proxy::start(runtime, &[master.port], r#""pool_size": 1, "large_pool_size": 0"#);
        std::thread::scope(|scope| {
            let small_clients: Vec<_> = (0..2)
                .map(|worker| {
                    let proxy = &proxy;
                    scope.spawn(move || {
                        let mut conn = proxy.connect();
                        for i in 0..200 {
                            let key = format!("small:{worker}:{i}");
                            let value = format!("value {worker} {i}");
                            assert_eq!(conn.call(&[b"SET", key.as_bytes(), value.as_bytes()]), status("OK"));
                            let got = conn.call(&[b"GET", key.as_bytes()]);
                            assert_eq!(got, Reply::Bulk(Some(value.into_bytes())), "{runtime:?}: {key}");
                        }
                    })
                })
                .collect();
            let value = big_value(BIG);
            let mut conn = proxy.connect();
            assert_eq!(conn.call(&[b"SET", b"big", &value]), status("OK"), "{runtime:?}");
            for round in 0..2 {
                match conn.call(&[b"GET", b"big"]) {
                    Reply::Bulk(Some(data)) => assert!(data == value, "{runtime:?}: GET {round}: other bytes"),
                    other => panic!("{runtime:?}: GET {round}: not a bulk reply: {:?}", std::mem::discriminant(&other)),
                }
            }
            for client in small_clients {
                client.join().expect("a small client failed");
            }
        });
    }
}

#[test]
fn a_slow_reader_of_a_large_value_does_not_make_the_proxy_hold_it() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        let value = big_value(BIG);
        assert_eq!(proxy.connect().call(&[b"SET", b"big", &value]), status("OK"), "{runtime:?}");
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(&proxy);

        let mut conn = proxy.connect();
        conn.send(&[b"GET", b"big"]);
        let header = format!("${BIG}\r\n").into_bytes();
        let mut reply = Vec::with_capacity(header.len() + BIG + 2);
        let mut stream = conn.stream().try_clone().expect("clone the stream");
        let mut chunk = vec![0u8; 1 << 20];
        let mut peak = before;
        let deadline = Instant::now() + Duration::from_secs(60);
        // At most 1 MiB every 10 ms: far slower than the proxy and the server can send over loopback, yet fast
        // enough to drain what the proxy queued well within its stall bound (1 s), also on a loaded machine:
        // past it the value would no longer be paced, by design.
        while reply.len() < header.len() + BIG + 2 {
            assert!(Instant::now() < deadline, "{runtime:?}: the value did not arrive within 60 s");
            let want = chunk.len().min(header.len() + BIG + 2 - reply.len());
            let n = stream.read(&mut chunk[..want]).expect("read the value");
            assert!(n > 0, "{runtime:?}: the proxy closed the connection");
            reply.extend_from_slice(&chunk[..n]);
            peak = peak.max(rss_kib(&proxy));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(reply.starts_with(&header), "{runtime:?}: not the bulk header");
        assert!(reply[header.len()..header.len() + BIG] == value[..], "{runtime:?}: other bytes");
        assert_eq!(&reply[header.len() + BIG..], b"\r\n");
        let grew_mib = peak.saturating_sub(before) / 1024;
        // Held whole, the value alone would be 64 MiB; streamed, the proxy holds what one turn of reads brings in.
        assert!(grew_mib < 24, "{runtime:?}: the proxy grew by {grew_mib} MiB while a client read 64 MiB slowly");
        eprintln!("{runtime:?}: the proxy grew by {grew_mib} MiB while a client read 64 MiB slowly");
    }
}

/// A client that sends a large value slowly: the proxy forwards it as it arrives (it never holds the value), the
/// value lands byte-exact, and a client gone halfway through its value sets nothing.
#[test]
fn a_large_value_sent_slowly_is_forwarded_as_it_arrives_and_half_a_value_sets_nothing() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        assert_eq!(proxy.connect().call(&[b"PING"]), status("PONG"));
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(&proxy);
        let value = big_value(BIG);
        let mut request = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${BIG}\r\n").into_bytes();
        request.extend_from_slice(&value);
        request.extend_from_slice(b"\r\n");

        let mut conn = proxy.connect();
        let mut peak = before;
        // 1 MiB every 10 ms: far slower than the proxy and the server take it over loopback.
        for piece in request.chunks(1 << 20) {
            conn.send_raw(piece);
            peak = peak.max(rss_kib(&proxy));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(conn.read_reply(), status("OK"), "{runtime:?}");
        let grew_mib = peak.saturating_sub(before) / 1024;
        // Held whole, the value alone would be 64 MiB; uploaded, the proxy holds what one turn of reads brings in.
        assert!(grew_mib < 24, "{runtime:?}: the proxy grew by {grew_mib} MiB while a client sent 64 MiB slowly");
        eprintln!("{runtime:?}: the proxy grew by {grew_mib} MiB while a client sent 64 MiB slowly");
        let mut direct = master.connect();
        match direct.call(&[b"GET", b"big"]) {
            Reply::Bulk(Some(data)) => assert!(data == value, "{runtime:?}: other bytes"),
            other => panic!("{runtime:?}: not a bulk reply: {:?}", std::mem::discriminant(&other)),
        }

        // Half a value, then the client is gone: the server never got the request's end, so nothing is set.
        let mut half = proxy.connect();
        let mut request = format!("*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n${BIG}\r\n").into_bytes();
        request.extend_from_slice(&value[..BIG / 2]);
        half.send_raw(&request);
        std::thread::sleep(Duration::from_millis(200));
        drop(half);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(direct.call(&[b"EXISTS", b"half"]), Reply::Int(0), "{runtime:?}");
        let mut after = proxy.connect();
        assert_eq!(after.call(&[b"SET", b"k", b"v"]), status("OK"), "{runtime:?}: the proxy goes on");
        assert_eq!(after.call(&[b"GET", b"k"]), bulk(b"v"), "{runtime:?}");
    }
}

/// Clients that move large values (a 100 kB reply, a 100 kB request value) go on the `large_pool_size`
/// connections; clients with small values keep sharing the `pool_size` ones.
#[test]
fn clients_that_move_large_values_get_connections_of_their_own() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let fields = r#""pool_size": 1, "large_pool_size": 3"#;
        let proxy = Proxy::start(runtime, &[master.port], fields);
        // With worker threads, each keeps one shared connection of its own (4 clients reach every worker).
        let shared = redis_proxy_tests::test_workers(fields).unwrap_or(1);
        let small: Vec<RespConn> = (0..4).map(|_| proxy.connect()).collect();
        for (i, mut conn) in small.into_iter().enumerate() {
            let key = format!("small:{i}");
            assert_eq!(conn.call(&[b"SET", key.as_bytes(), b"v"]), status("OK"), "{runtime:?}");
            assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(b"v"), "{runtime:?}");
        }
        // The probe and the one shared connection (per worker).
        let small = proxy_connections(master.port).0;
        assert_eq!(small, 1 + shared, "{runtime:?}: small clients share pool_size connections");

        let value = big_value(100_000);
        let mut writer = proxy.connect();
        let mut reader = proxy.connect();
        let mut other = proxy.connect();
        assert_eq!(writer.call(&[b"SET", b"big", &value]), status("OK"), "{runtime:?}");
        assert_eq!(reader.call(&[b"GET", b"big"]), bulk(&value), "{runtime:?}");
        assert_eq!(other.call(&[b"SET", b"small", b"v"]), status("OK"), "{runtime:?}");
        // Their next requests go on connections set aside for large values, byte-exact as before.
        assert_eq!(writer.call(&[b"SET", b"big2", &value]), status("OK"), "{runtime:?}");
        assert_eq!(reader.call(&[b"GET", b"big2"]), bulk(&value), "{runtime:?}");
        assert_eq!(other.call(&[b"GET", b"small"]), bulk(b"v"), "{runtime:?}");
        let connections = proxy_connections(master.port).0;
        assert!(
            (3..=5).contains(&connections),
            "{runtime:?}: {connections} connections: the probe, the shared one, and 1-3 for large values"
        );
    }
}
