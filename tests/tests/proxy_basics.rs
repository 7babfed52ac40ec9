//! Issue 2's "done means": a proxy in front of one master behaves exactly like Redis, every byte intact.

use redis_proxy_tests::{bulk, encode_command, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::io::Write;
use std::time::Duration;

/// Runs `scenario` against a fresh master and a proxy of every runtime.
fn each_runtime(scenario: impl Fn(&RedisServer, &Proxy)) {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], "");
        scenario(&master, &proxy);
    }
}

/// Pseudo-random bytes covering every byte value (xorshift; deterministic).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.push(if i < 256 { i as u8 } else { seed as u8 });
    }
    out
}

#[test]
fn ten_mib_binary_value_round_trips_intact() {
    each_runtime(|_, proxy| {
        let value = random_bytes(10 * 1024 * 1024, 0x9e3779b97f4a7c15);
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"blob", &value]), status("OK"));
        assert_eq!(conn.call(&[b"GET", b"blob"]), Reply::Bulk(Some(value)));
    });
}

#[test]
fn hundred_thousand_pipelined_commands_come_back_in_order() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        let request = encode_command(&[b"INCR", b"counter"]);
        let mut batch = Vec::with_capacity(request.len() * 100_000);
        for _ in 0..100_000 {
            batch.extend_from_slice(&request);
        }
        let writer = {
            let mut stream = conn.stream().try_clone().unwrap();
            std::thread::spawn(move || stream.write_all(&batch).unwrap())
        };
        for expected in 1..=100_000 {
            assert_eq!(conn.read_reply(), Reply::Int(expected));
        }
        writer.join().unwrap();
    });
}

#[test]
fn two_hundred_concurrent_clients_get_only_their_own_answers() {
    each_runtime(|_, proxy| {
        let port = proxy.port;
        let workers: Vec<_> = (0..200)
            .map(|client| {
                std::thread::spawn(move || {
                    let mut conn = RespConn::connect(port);
                    for round in 0..50 {
                        let key = format!("client:{client}");
                        let value = format!("{client}-{round}");
                        assert_eq!(conn.call(&[b"SET", key.as_bytes(), value.as_bytes()]), status("OK"));
                        assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(value.as_bytes()));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("client thread saw a wrong answer");
        }
    });
}

#[test]
fn multi_exec_and_watch_conflict_behave_as_redis() {
    each_runtime(|_, proxy| {
        let mut a = proxy.connect();
        let mut b = proxy.connect();
        assert_eq!(a.call(&[b"MULTI"]), status("OK"));
        assert_eq!(a.call(&[b"SET", b"tx", b"1"]), status("QUEUED"));
        assert_eq!(a.call(&[b"INCR", b"tx"]), status("QUEUED"));
        assert_eq!(a.call(&[b"EXEC"]), Reply::Array(Some(vec![status("OK"), Reply::Int(2)])));
        // WATCH conflict: another client changes the key between WATCH and EXEC.
        assert_eq!(a.call(&[b"WATCH", b"tx"]), status("OK"));
        assert_eq!(b.call(&[b"SET", b"tx", b"changed"]), status("OK"));
        assert_eq!(a.call(&[b"MULTI"]), status("OK"));
        assert_eq!(a.call(&[b"SET", b"tx", b"mine"]), status("QUEUED"));
        assert_eq!(a.call(&[b"EXEC"]), Reply::Array(None));
        assert_eq!(b.call(&[b"GET", b"tx"]), bulk(b"changed"));
        // An open MULTI does not leak: a client that leaves mid-transaction leaves nothing queued behind.
        assert_eq!(b.call(&[b"MULTI"]), status("OK"));
        assert_eq!(b.call(&[b"SET", b"leak", b"1"]), status("QUEUED"));
        drop(b);
        let mut c = proxy.connect();
        assert_eq!(c.call(&[b"GET", b"leak"]), Reply::Bulk(None));
        assert_eq!(c.call(&[b"EXEC"]), Reply::Error("ERR EXEC without MULTI".into()));
    });
}

#[test]
fn blpop_is_woken_by_another_client() {
    each_runtime(|_, proxy| {
        let port = proxy.port;
        let waiter = std::thread::spawn(move || {
            let mut conn = RespConn::connect(port);
            conn.call(&[b"BLPOP", b"queue", b"5"])
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut pusher = proxy.connect();
        // Other clients are not stuck behind the blocked one.
        assert_eq!(pusher.call(&[b"PING"]), status("PONG"));
        assert_eq!(pusher.call(&[b"RPUSH", b"queue", b"job"]), Reply::Int(1));
        assert_eq!(waiter.join().unwrap(), Reply::Array(Some(vec![bulk(b"queue"), bulk(b"job")])));
    });
}

#[test]
fn subscribe_receives_published_messages() {
    each_runtime(|_, proxy| {
        let mut subscriber = proxy.connect();
        let expected = Reply::Array(Some(vec![bulk(b"subscribe"), bulk(b"news"), Reply::Int(1)]));
        assert_eq!(subscriber.call(&[b"SUBSCRIBE", b"news"]), expected);
        let mut publisher = proxy.connect();
        assert_eq!(publisher.call(&[b"PUBLISH", b"news", b"hello \xff"]), Reply::Int(1));
        let message = Reply::Array(Some(vec![bulk(b"message"), bulk(b"news"), bulk(b"hello \xff")]));
        assert_eq!(subscriber.read_reply(), message);
        drop(subscriber);
        // The subscription does not leak to the next user of a pooled connection.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(publisher.call(&[b"PUBLISH", b"news", b"again"]), Reply::Int(0));
    });
}

#[test]
fn select_does_not_leak_to_a_new_client() {
    each_runtime(|_, proxy| {
        let mut a = proxy.connect();
        assert_eq!(a.call(&[b"SELECT", b"5"]), status("OK"));
        assert_eq!(a.call(&[b"SET", b"where", b"db5"]), status("OK"));
        assert_eq!(a.call(&[b"GET", b"where"]), bulk(b"db5"));
        drop(a);
        for _ in 0..5 {
            let mut b = proxy.connect();
            assert_eq!(b.call(&[b"GET", b"where"]), Reply::Bulk(None), "a new client must start in db 0");
        }
    });
}

#[test]
fn garbage_and_huge_bulk_headers_get_protocol_errors_and_close() {
    each_runtime(|_, proxy| {
        let mut bystander = proxy.connect();
        assert_eq!(bystander.call(&[b"SET", b"k", b"v"]), status("OK"));

        let mut garbage = proxy.connect();
        garbage.send_raw(b"*1\r\n:oops\r\n");
        assert_eq!(garbage.read_reply(), Reply::Error("ERR Protocol error: expected '$', got ':'".into()));
        assert!(garbage.is_closed_by_peer());

        let mut huge = proxy.connect();
        huge.send_raw(b"*2\r\n$3\r\nGET\r\n$2147483648\r\n");
        assert_eq!(huge.read_reply(), Reply::Error("ERR Protocol error: invalid bulk length".into()));
        assert!(huge.is_closed_by_peer());

        assert_eq!(bystander.call(&[b"GET", b"k"]), bulk(b"v"));
    });
}

#[test]
fn a_client_reset_mid_pipeline_does_not_disturb_others() {
    each_runtime(|_, proxy| {
        let mut setup = proxy.connect();
        let big = vec![b'x'; 256 * 1024];
        assert_eq!(setup.call(&[b"SET", b"big", &big]), status("OK"));
        for _ in 0..20 {
            let mut rude = proxy.connect();
            let request = encode_command(&[b"GET", b"big"]);
            rude.send_raw(&request.repeat(200));
            std::thread::sleep(Duration::from_millis(20));
            // Closing with unread replies in the receive buffer makes the kernel send a TCP reset.
            drop(rude);
        }
        let mut other = proxy.connect();
        for i in 0..100 {
            let value = i.to_string();
            assert_eq!(other.call(&[b"SET", b"after", value.as_bytes()]), status("OK"));
            assert_eq!(other.call(&[b"GET", b"after"]), bulk(value.as_bytes()));
        }
    });
}

#[test]
fn inline_commands_work_like_redis_cli_sends_them() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        conn.send_raw(b"SET inline \"a b\"\r\nGET inline\r\nPING\r\n");
        assert_eq!(conn.read_reply(), status("OK"));
        assert_eq!(conn.read_reply(), bulk(b"a b"));
        assert_eq!(conn.read_reply(), status("PONG"));
    });
}

#[test]
fn quit_answers_ok_and_closes() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"SET", b"q", b"1"]), status("OK"));
        conn.send_raw(&encode_command(&[b"GET", b"q"]));
        conn.send_raw(&encode_command(&[b"QUIT"]));
        assert_eq!(conn.read_reply(), bulk(b"1"));
        assert_eq!(conn.read_reply(), status("OK"));
        assert!(conn.is_closed_by_peer());
    });
}

#[test]
fn a_pinned_client_can_pipeline_into_subscribe_mode() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        assert_eq!(conn.call(&[b"CLIENT", b"SETNAME", b"pinned"]), status("OK"));
        assert_eq!(conn.call(&[b"SET", b"a", b"1"]), status("OK"));
        conn.send_raw(&encode_command(&[b"GET", b"a"]));
        conn.send_raw(&encode_command(&[b"SUBSCRIBE", b"ch1", b"ch2"]));
        assert_eq!(conn.read_reply(), bulk(b"1"));
        assert_eq!(conn.read_reply(), Reply::Array(Some(vec![bulk(b"subscribe"), bulk(b"ch1"), Reply::Int(1)])));
        assert_eq!(conn.read_reply(), Reply::Array(Some(vec![bulk(b"subscribe"), bulk(b"ch2"), Reply::Int(2)])));
        assert_eq!(proxy.connect().call(&[b"PUBLISH", b"ch2", b"m"]), Reply::Int(1));
        assert_eq!(conn.read_reply(), Reply::Array(Some(vec![bulk(b"message"), bulk(b"ch2"), bulk(b"m")])));
        assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]).clone(), Reply::Error(
            "ERR Can't execute 'client|getname': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context".into()
        ));
    });
}

#[test]
fn hello_and_client_name_stay_with_their_client() {
    each_runtime(|_, proxy| {
        let mut conn = proxy.connect();
        let hello = conn.call(&[b"HELLO", b"2", b"SETNAME", b"mine"]);
        assert!(matches!(hello, Reply::Array(Some(_))), "HELLO 2 answers with a list: {hello:?}");
        assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]), bulk(b"mine"));
        // Another client (on the shared connections) has no name.
        let mut other = proxy.connect();
        assert_eq!(other.call(&[b"CLIENT", b"GETNAME"]), Reply::Bulk(None));
        drop(conn);
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..3 {
            assert_eq!(proxy.connect().call(&[b"CLIENT", b"GETNAME"]), Reply::Bulk(None));
        }
    });
}

#[test]
fn sigterm_delivers_the_replies_clients_await_then_closes_them_and_exits_zero() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let mut proxy = Proxy::start(runtime, &[master.port], "");
        let mut idle = proxy.connect();
        assert_eq!(idle.call(&[b"PING"]), status("PONG"));
        let mut waiting = proxy.connect();
        waiting.send(&[b"BLPOP", b"queue", b"1"]);
        std::thread::sleep(Duration::from_millis(200));
        proxy.signal("TERM");
        // The blocked client still gets its answer (a timeout after 1 s), then the end of the stream.
        assert_eq!(waiting.read_reply(), Reply::Array(None), "{runtime:?}");
        assert!(waiting.is_closed_by_peer());
        assert!(idle.is_closed_by_peer());
        assert!(wait_until(Duration::from_secs(5), || !proxy.is_running()), "the proxy exits after SIGTERM");
        assert_eq!(proxy.exit_status().and_then(|s| s.code()), Some(0), "log:\n{}", proxy.log());
    }
}
