//! What only the tokio runtime has: the proxy embedded in-process with a shutdown future and an event stream, and
//! the graceful shutdown on SIGTERM of `redis-proxy-tokio` (clients get every reply sent, then a clean EOF).

use redis_proxy_engine::{Config, Event, ServerAddress};
use redis_proxy_tests::{bulk, status, wait_until, Proxy as ProxyProcess, RedisServer, Reply, RespConn, Runtime};
use redis_proxy_tokio::Proxy;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;

/// A client that pipelines `INCR counter` as fast as it can while its replies are read: after a shutdown it must
/// have seen an unbroken run 1, 2, 3 ... and then a clean end of stream (no reset, no partial reply).
struct Flood {
    reader: BufReader<TcpStream>,
    writer: thread::JoinHandle<()>,
    last: i64,
}

impl Flood {
    fn start(port: u16) -> Flood {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
        let mut write_half = stream.try_clone().expect("clone stream");
        let writer = thread::spawn(move || {
            let batch = b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n".repeat(100);
            for _ in 0..2_000 {
                if write_half.write_all(&batch).is_err() {
                    return;
                }
            }
        });
        Flood { reader: BufReader::new(stream), writer, last: 0 }
    }

    /// Reads replies until `count` arrived (Some) or the stream ended cleanly (None); panics on anything else.
    fn read(&mut self, count: i64) -> Option<()> {
        let mut line = String::new();
        while self.last < count {
            line.clear();
            let n = self.reader.read_line(&mut line).expect("replies, then a clean EOF (not a reset)");
            if n == 0 {
                return None;
            }
            assert_eq!(line, format!(":{}\r\n", self.last + 1), "replies must come whole and in order");
            self.last += 1;
        }
        Some(())
    }

    /// Reads to the end; returns how many replies the client got in all.
    fn finish(mut self) -> i64 {
        assert_eq!(self.read(i64::MAX), None);
        drop(self.reader);
        self.writer.join().expect("writer thread");
        self.last
    }
}

#[test]
fn embedded_proxy_reports_events_and_shuts_down_cleanly_when_its_future_completes() {
    let master = RedisServer::start();
    let mut config = Config::with_servers(vec![ServerAddress { host: "127.0.0.1".into(), port: master.port }]);
    config.bind_address = "127.0.0.1".into();
    config.listen_port = 0;
    // A multi-thread runtime: the proxy's futures are Send and run there as they do on a current-thread one.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let proxy = runtime.block_on(Proxy::bind(config)).expect("bind an ephemeral port");
    let port = proxy.local_addr().expect("local address").port();
    let mut events = proxy.subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = runtime.spawn(proxy.run(async move {
        let _ = stopped.await;
    }));

    let mut idle = RespConn::connect(port);
    assert_eq!(idle.call(&[b"SET", b"key", b"value"]), status("OK"));
    assert_eq!(idle.call(&[b"GET", b"key"]), bulk(b"value"));
    let mut flood = Flood::start(port);
    assert_eq!(flood.read(5_000), Some(()));

    stop.send(()).expect("the proxy is running");
    assert!(idle.is_closed_by_peer(), "an idle client gets a clean EOF");
    drop(idle);
    let replies = flood.finish();
    let result = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await });
    assert!(matches!(result, Ok(Ok(Ok(())))), "run() returns Ok soon after the shutdown future: {result:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the listener is closed");
    let Reply::Bulk(Some(counter)) = master.connect().call(&[b"GET", b"counter"]) else { panic!("GET counter") };
    let counter: i64 = String::from_utf8(counter).expect("digits").parse().expect("a number");
    assert!(counter >= replies, "every reply the client got was a write the master made ({counter} < {replies})");

    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Closed) => break,
            Err(TryRecvError::Empty) => panic!("the event stream ends when run() returns"),
        }
    }
    assert!(seen.iter().any(|e| matches!(e, Event::MasterAdopted { .. })), "events: {seen:?}");
    assert!(seen.iter().any(|e| matches!(e, Event::ClientAccepted { .. })), "events: {seen:?}");
}

#[test]
fn sigterm_sends_clients_every_reply_then_a_clean_eof_and_exits_zero() {
    let master = RedisServer::start();
    let mut proxy = ProxyProcess::start(Runtime::Tokio, &[master.port], "");
    let mut idle = proxy.connect();
    assert_eq!(idle.call(&[b"PING"]), status("PONG"));
    let mut flood = Flood::start(proxy.port);
    assert_eq!(flood.read(5_000), Some(()));

    proxy.signal("TERM");
    assert!(idle.is_closed_by_peer(), "an idle client gets a clean EOF");
    drop(idle);
    flood.finish();
    assert!(wait_until(Duration::from_secs(5), || !proxy.is_running()), "the proxy exits after SIGTERM");
    assert_eq!(proxy.exit_status().and_then(|s| s.code()), Some(0), "log:\n{}", proxy.log());
    assert!(proxy.log().contains("SIGTERM: closing clients"), "log:\n{}", proxy.log());
}
