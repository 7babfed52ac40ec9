//! A connection the proxy closes (after `QUIT`, after a protocol error, at shutdown) first gets every byte queued
//! for it, however slowly it reads, then a clean end of stream: the meaning of `Action::Close` in every runtime, as
//! in Redis.

use redis_proxy_tests::{encode_command, status, wait_until, Proxy, RedisServer, Reply, RespConn, Runtime};
use std::time::{Duration, Instant};

/// Replies pipelined behind one another: with 1 MiB each, far more than the kernel's socket buffers hold, so most
/// of them wait in the proxy when it is told to close.
const LARGE_REPLIES: usize = 20;
/// How long the client reads nothing after its pipeline, so the proxy's queue is full when the close comes.
const NOT_READING: Duration = Duration::from_secs(2);

/// A 1 MiB value with every byte value in it (deterministic).
fn large_value() -> Vec<u8> {
    (0..1usize << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Stores the large value through a fresh proxy of `runtime`, sends `GET`x`LARGE_REPLIES` followed by `tail` in a
/// single write, reads nothing for `NOT_READING`, then reads and checks every large reply byte for byte.
fn pipeline_large_gets_then(runtime: Runtime, tail: &[u8]) -> (RespConn, RedisServer, Proxy) {
    let master = RedisServer::start();
    let proxy = Proxy::start(runtime, &[master.port], "");
    let value = large_value();
    let mut conn = proxy.connect();
    assert_eq!(conn.call(&[b"SET", b"large", &value]), status("OK"), "{runtime:?}");
    let mut pipeline = encode_command(&[b"GET", b"large"]).repeat(LARGE_REPLIES);
    pipeline.extend_from_slice(tail);
    conn.send_raw(&pipeline);
    std::thread::sleep(NOT_READING);
    for index in 0..LARGE_REPLIES {
        match conn.try_read_reply() {
            Ok(Reply::Bulk(Some(data))) if data == value => {}
            // Not the reply itself: a mismatching 1 MiB value would flood the output.
            Ok(other) => panic!("{runtime:?}: reply {index} is not the value ({} bytes)", reply_size(&other)),
            Err(error) => panic!("{runtime:?}: reply {index} of {LARGE_REPLIES} did not arrive: {error}"),
        }
    }
    (conn, master, proxy)
}

fn reply_size(reply: &Reply) -> usize {
    match reply {
        Reply::Bulk(Some(data)) => data.len(),
        _ => 0,
    }
}

#[test]
fn quit_behind_large_replies_sends_every_byte_then_ok_then_a_clean_eof() {
    for &runtime in Runtime::ALL {
        let (mut conn, _master, proxy) = pipeline_large_gets_then(runtime, &encode_command(&[b"QUIT"]));
        assert_eq!(conn.try_read_reply().ok(), Some(status("OK")), "{runtime:?}: QUIT's reply; log:\n{}", proxy.log());
        assert!(conn.is_closed_by_peer(), "{runtime:?}: a clean end of stream (not a reset) after +OK");
    }
}

#[test]
fn protocol_error_behind_large_replies_arrives_complete_before_the_close() {
    for &runtime in Runtime::ALL {
        let (mut conn, _master, proxy) = pipeline_large_gets_then(runtime, b"*1\r\n$abc\r\n");
        match conn.try_read_reply() {
            Ok(Reply::Error(message)) => {
                assert_eq!(message, "ERR Protocol error: invalid bulk length", "{runtime:?}");
            }
            other => panic!("{runtime:?}: expected the protocol error, got {other:?}; log:\n{}", proxy.log()),
        }
        assert!(conn.is_closed_by_peer(), "{runtime:?}: a clean end of stream (not a reset) after the error");
    }
}

#[test]
fn sigterm_closes_a_client_blocked_forever_once_shutdown_grace_ends_and_exits_zero() {
    const GRACE_MS: u64 = 300;
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let mut proxy = Proxy::start(runtime, &[master.port], &format!(r#""shutdown_grace": {GRACE_MS}"#));
        let mut blocked = proxy.connect();
        blocked.send(&[b"BLPOP", b"never-pushed", b"0"]);
        std::thread::sleep(Duration::from_millis(200));
        let signalled = Instant::now();
        proxy.signal("TERM");
        assert!(blocked.is_closed_by_peer(), "{runtime:?}: a clean end of stream for the blocked client");
        let waited = signalled.elapsed();
        assert!(waited >= Duration::from_millis(GRACE_MS), "{runtime:?}: closed after {waited:?}, before the grace");
        assert!(wait_until(Duration::from_secs(5), || !proxy.is_running()), "{runtime:?}: exits after the grace");
        assert_eq!(proxy.exit_status().and_then(|s| s.code()), Some(0), "{runtime:?}: log:\n{}", proxy.log());
    }
}
