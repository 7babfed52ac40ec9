//! Issue 11, part 1: clients that open with `HELLO 3`, `CLIENT SETINFO` and `CLIENT SETNAME` (redis-py 5+, ioredis,
//! node-redis) are multiplexed onto shared connections of their protocol instead of pinning one each.

use redis_proxy_tests::{bulk, proxy_connections, status, Proxy, RedisServer, Reply, RespConn, Runtime};

#[test]
fn hello_3_clients_share_resp3_connections_and_their_names_pin_nothing() {
    for &runtime in Runtime::ALL {
        let master = RedisServer::start();
        let proxy = Proxy::start(runtime, &[master.port], r#""pool_size": 2"#);
        let mut clients: Vec<RespConn> = (0..30).map(|_| proxy.connect()).collect();
        for (i, conn) in clients.iter_mut().enumerate() {
            let Reply::Array(Some(hello)) = conn.call(&[b"HELLO", b"3"]) else { panic!("HELLO 3 answers a map") };
            let field = |name: &[u8]| hello.chunks(2).find(|kv| kv[0] == bulk(name)).map(|kv| kv[1].clone());
            assert_eq!(field(b"proto"), Some(Reply::Int(3)));
            assert_eq!(field(b"server"), Some(bulk(b"redis")));
            assert!(matches!(field(b"role"), Some(Reply::Bulk(Some(role))) if role == b"master"));
            assert_eq!(conn.call(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"check"]), status("OK"));
            assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]), Reply::Bulk(None));
            let name = format!("client-{i}");
            assert_eq!(conn.call(&[b"CLIENT", b"SETNAME", name.as_bytes()]), status("OK"));
            let key = format!("key-{i}");
            assert_eq!(conn.call(&[b"SET", key.as_bytes(), name.as_bytes()]), status("OK"));
            assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(name.as_bytes()));
        }
        for (i, conn) in clients.iter_mut().enumerate() {
            assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]), bulk(format!("client-{i}").as_bytes()));
        }
        let (all, resp3) = proxy_connections(master.port);
        // Two RESP3 shared connections at most, the probe, and no private connection for anyone.
        assert!(resp3 <= 2 && all <= 3, "{all} proxy connections on the master, {resp3} RESP3 ({runtime:?})");

        // HELLO 2 moves a client back; RESET too, and forgets the name.
        assert_eq!(clients[1].call(&[b"RESET"]), status("RESET"));
        assert_eq!(clients[1].call(&[b"CLIENT", b"GETNAME"]), Reply::Bulk(None));
        // CLIENT ID refers to the server's connection: it pins one for the client.
        assert!(matches!(clients[2].call(&[b"CLIENT", b"ID"]), Reply::Int(_)));
        assert_eq!(proxy_connections(master.port).0, all + 1);
    }
}
