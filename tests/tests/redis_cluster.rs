//! Issue 22 end to end: the proxy in cluster mode in front of a real Redis Cluster of 3 primaries and 3 replicas
//! (`redis_proxy_tests::redis_cluster`), on both runtimes, with clients that know nothing of slots: `MOVED`, `ASK`
//! and `TRYAGAIN` never reach them, multi-key commands are split by slot or refused with `-CROSSSLOT`, and
//! reshards, planned failovers and a SIGKILLed primary cost them no error. A cluster whose nodes want a password is
//! served with `server_auth` (and refused with the reason without it), and one that speaks TLS with `server_tls`.
//!
//! Every scenario starts a fresh cluster for each runtime and runs alone (`exclusive`): several clusters at once
//! on a 2-core machine could starve a node long enough for its peers to fail it over. Every loop is bounded in
//! count and in time. The first test checks the harness itself, with no proxy.

use redis_proxy_tests::redis_cluster::{RedisCluster, SLOTS};
use redis_proxy_tests::tls::Certs;
use redis_proxy_tests::{bulk, calls, encode_command, exclusive, free_port, http_get, status, wait_until, Proxy};
use redis_proxy_tests::{RedisServer, Reply, RespConn, Runtime};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Redis Cluster's own error for a multi-key command whose keys span slots.
const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// A proxy in cluster mode in front of `cluster`, with the issue's 5 s refresh period.
fn proxy_for(runtime: Runtime, cluster: &RedisCluster) -> Proxy {
    Proxy::start_with_fields(runtime, &cluster.proxy_fields(5000))
}

/// A command as text, for assertion messages.
fn show(args: &[&[u8]]) -> String {
    args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>().join(" ")
}

/// Sends `args` on `conn` and returns the reply; panics naming the command on a timeout or a closed connection.
fn ask(conn: &mut RespConn, args: &[&[u8]]) -> Reply {
    conn.try_call(args).unwrap_or_else(|e| panic!("{}: no reply ({e})", show(args)))
}

/// Asserts that no live node was sent `REPLICAOF` or `SLAVEOF`: the harness never sends them, the proxy must not.
fn assert_no_replicaof(cluster: &RedisCluster) {
    for port in cluster.live_ports() {
        let stats = cluster.connect(port).call(&[b"INFO", b"commandstats"]);
        let Reply::Bulk(Some(stats)) = stats else { panic!("INFO commandstats on :{port}: {stats:?}") };
        let stats = String::from_utf8_lossy(&stats);
        assert!(
            !stats.contains("cmdstat_replicaof:") && !stats.contains("cmdstat_slaveof:"),
            ":{port} was sent REPLICAOF:\n{stats}"
        );
    }
}

#[test]
fn the_harness_forms_a_cluster_reshards_fails_over_and_sees_a_promotion() {
    let _serial = exclusive();
    let mut cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{}", cluster.describe());
    let replicas: BTreeSet<u16> = primaries.iter().map(|p| cluster.replica_of(*p)).collect();
    assert_eq!(replicas.len(), 3, "one replica per primary");
    assert!(replicas.iter().all(|r| !primaries.contains(r)));
    let map = cluster.slot_map();
    for p in &primaries {
        let served = map.iter().filter(|o| *o == p).count();
        assert!((5_400..=5_500).contains(&served), ":{p} serves {served} slots");
    }

    // A key written on its slot's owner is there; another primary redirects to it.
    let slot = cluster.key_slot(b"harness:key");
    let owner = cluster.owner_of_slot(slot);
    assert_eq!(map[slot as usize], owner);
    let mut direct = RespConn::connect(owner);
    assert_eq!(direct.call(&[b"SET", b"harness:key", b"v1"]), status("OK"));
    assert_eq!(direct.call(&[b"WAIT", b"1", b"5000"]), Reply::Int(1), "the replica has the write");
    let other = *primaries.iter().find(|p| **p != owner).expect("another primary");
    assert_eq!(
        RespConn::connect(other).call(&[b"GET", b"harness:key"]),
        Reply::Error(format!("MOVED {slot} 127.0.0.1:{owner}"))
    );
    // Hash tags: only the part in braces is hashed.
    assert_eq!(cluster.key_slots(&[b"{user1}:a", b"{user1}:b", b"user1"]), vec![cluster.key_slot(b"user1"); 3]);

    // A frozen migration behaves as the cluster tests expect: ASK for a moved key, TRYAGAIN for a multi-key
    // command over a moved and an unmoved key, on both sides, for as long as the slot stays open.
    let tag_slot = cluster.key_slot(b"{harness}");
    let src = cluster.owner_of_slot(tag_slot);
    let dst = *primaries.iter().find(|p| **p != src).expect("another primary");
    let mut on_src = RespConn::connect(src);
    assert_eq!(on_src.call(&[b"MSET", b"{harness}moved", b"m", b"{harness}stay", b"s"]), status("OK"));
    cluster.freeze_migration(tag_slot, src, dst);
    cluster.migrate_key(src, dst, b"{harness}moved");
    assert_eq!(on_src.call(&[b"GET", b"{harness}moved"]), Reply::Error(format!("ASK {tag_slot} 127.0.0.1:{dst}")));
    assert_eq!(on_src.call(&[b"GET", b"{harness}stay"]), bulk(b"s"));
    let tryagain = on_src.call(&[b"MGET", b"{harness}moved", b"{harness}stay"]);
    assert!(matches!(&tryagain, Reply::Error(e) if e.starts_with("TRYAGAIN")), "{tryagain:?}");
    let mut on_dst = RespConn::connect(dst);
    assert_eq!(on_dst.call(&[b"ASKING"]), status("OK"));
    let tryagain = on_dst.call(&[b"MGET", b"{harness}moved", b"{harness}stay"]);
    assert!(matches!(&tryagain, Reply::Error(e) if e.starts_with("TRYAGAIN")), "{tryagain:?}");
    let src_view = cluster.own_view(src).expect("src answers");
    assert_eq!(src_view.open_slots, vec![format!("[{tag_slot}->-{}]", cluster.node_id(dst))]);
    let dst_view = cluster.own_view(dst).expect("dst answers");
    assert_eq!(dst_view.open_slots, vec![format!("[{tag_slot}-<-{}]", cluster.node_id(src))]);
    // Finish the move as redis-cli does: the last key, then the slot to the target, then to the source.
    cluster.migrate_key(src, dst, b"{harness}stay");
    let slot_text = tag_slot.to_string();
    for port in [dst, src] {
        let args = [&b"CLUSTER"[..], b"SETSLOT", slot_text.as_bytes(), b"NODE", cluster.node_id(dst).as_bytes()];
        assert_eq!(RespConn::connect(port).call(&args), status("OK"));
    }
    cluster.settled();
    assert_eq!(cluster.owner_of_slot(tag_slot), dst);
    assert_eq!(
        on_dst.call(&[b"MGET", b"{harness}moved", b"{harness}stay"]),
        Reply::Array(Some(vec![bulk(b"m"), bulk(b"s")]))
    );

    // A reshard moves the source's lowest slots, with their keys.
    let (from, to) = (primaries[0], primaries[1]);
    let first: BTreeSet<u16> = cluster.slots_of(from)[..100].iter().copied().collect();
    let keys = cluster.keys_where("harness:reshard", 5, |s| first.contains(&s));
    let mut on_from = RespConn::connect(from);
    for (key, _) in &keys {
        assert_eq!(on_from.call(&[b"SET", key.as_bytes(), key.as_bytes()]), status("OK"));
    }
    let moved: BTreeSet<u16> = cluster.reshard(from, to, 100).into_iter().collect();
    assert_eq!(moved, first);
    let mut on_to = RespConn::connect(to);
    for (key, slot) in &keys {
        assert_eq!(cluster.owner_of_slot(*slot), to);
        assert_eq!(on_to.call(&[b"GET", key.as_bytes()]), bulk(key.as_bytes()));
    }

    // CLUSTER FAILOVER swaps a primary and its replica.
    let old = primaries[2];
    let replica = cluster.replica_of(old);
    cluster.failover(replica);
    let now: BTreeSet<u16> = cluster.primaries().into_iter().collect();
    assert_eq!(now, BTreeSet::from([primaries[0], primaries[1], replica]));
    assert_eq!(cluster.replica_of(replica), old);

    // SIGKILL of a primary: its replica takes over its slots, with the key written before.
    let replica = cluster.replica_of(owner);
    cluster.kill(owner);
    assert_eq!(cluster.wait_for_promotion(owner), replica);
    assert_eq!(cluster.owner_of_slot(slot), replica);
    assert_eq!(RespConn::connect(replica).call(&[b"GET", b"harness:key"]), bulk(b"v1"));
    // Restarted, the old primary rejoins as a replica of the new one.
    cluster.restart(owner);
    cluster.ready();
    assert_eq!(cluster.replica_of(replica), owner);
}

#[test]
fn single_key_commands_reach_the_primary_of_their_slot() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let keys: Vec<String> = (0..1_000).map(|i| format!("basic:{i}")).collect();
        let value = |i: usize| format!("value:{i}");
        // Half written with a raw connection, half with the redis crate; all read back with both.
        let mut conn = proxy.connect();
        let mut client = proxy.client();
        for (i, key) in keys.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(conn.call(&[b"SET", key.as_bytes(), value(i).as_bytes()]), status("OK"), "{runtime:?}");
            } else {
                let reply: String = redis::cmd("SET").arg(key).arg(value(i)).query(&mut client).expect("SET");
                assert_eq!(reply, "OK");
            }
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(value(i).as_bytes()), "{runtime:?} GET {key}");
            let got: Option<String> = redis::cmd("GET").arg(key).query(&mut client).expect("GET");
            assert_eq!(got, Some(value(i)));
        }
        // Each key is on the primary serving its slot, read there directly.
        let map = cluster.slot_map();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let slots = cluster.key_slots(&refs);
        let mut direct: HashMap<u16, RespConn> = HashMap::new();
        let mut per_owner: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, (key, slot)) in keys.iter().zip(&slots).enumerate() {
            let owner = map[*slot as usize];
            *per_owner.entry(owner).or_default() += 1;
            let on_owner = direct.entry(owner).or_insert_with(|| RespConn::connect(owner));
            assert_eq!(on_owner.call(&[b"GET", key.as_bytes()]), bulk(value(i).as_bytes()), "{key} on :{owner}");
        }
        assert_eq!(per_owner.len(), 3, "the keys spread over the 3 primaries: {per_owner:?}");
        eprintln!("{runtime:?}: 1,000 keys by primary {per_owner:?}");

        // Large values (past the sizes at which the proxy streams replies and uploads requests in the other
        // modes): whole and byte-exact, on their slot's primary.
        let large: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(conn.call(&[b"SET", b"basic:large", &large]), status("OK"), "{runtime:?}");
        assert_eq!(conn.call(&[b"GET", b"basic:large"]), bulk(&large), "{runtime:?}: the 3 MiB value comes back");
        let owner = cluster.owner_of_slot(cluster.key_slot(b"basic:large"));
        assert_eq!(RespConn::connect(owner).call(&[b"STRLEN", b"basic:large"]), Reply::Int(3 * 1024 * 1024));
        assert_eq!(conn.call(&[b"GET", b"basic:0"]), bulk(value(0).as_bytes()), "the connection goes on");

        // Hash tags: 20 keys with one tag share a slot, and its primary holds them all.
        let tagged: Vec<String> = (0..20).map(|i| format!("{{basic-tag}}:{i}")).collect();
        for key in &tagged {
            assert_eq!(conn.call(&[b"SET", key.as_bytes(), b"t"]), status("OK"));
        }
        let refs: Vec<&[u8]> = tagged.iter().map(|k| k.as_bytes()).collect();
        let slots: BTreeSet<u16> = cluster.key_slots(&refs).into_iter().collect();
        assert_eq!(slots.len(), 1, "one slot for one tag");
        let owner = cluster.owner_of_slot(*slots.first().expect("a slot"));
        let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
        exists.extend(&refs);
        assert_eq!(RespConn::connect(owner).call(&exists), Reply::Int(20));
        assert_no_replicaof(&cluster);
    }
}

/// The names in an array reply, sorted.
fn sorted_names(reply: Reply) -> Vec<String> {
    let Reply::Array(Some(items)) = reply else { panic!("an array: {reply:?}") };
    let mut names: Vec<String> = items
        .into_iter()
        .map(|item| match item {
            Reply::Bulk(Some(name)) => String::from_utf8(name).expect("a UTF-8 name"),
            other => panic!("a name: {other:?}"),
        })
        .collect();
    names.sort();
    names
}

#[test]
fn whole_keyspace_commands_and_wait_cover_every_primary() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let mut conn = proxy.connect();
        let mut keys: Vec<String> = (0..30).map(|i| format!("whole:{i}")).collect();
        for key in &keys {
            assert_eq!(conn.call(&[b"SET", key.as_bytes(), b"v"]), status("OK"), "{runtime:?}");
        }
        keys.sort();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let map = cluster.slot_map();
        let owners: BTreeSet<u16> = cluster.key_slots(&refs).into_iter().map(|s| map[usize::from(s)]).collect();
        assert_eq!(owners.len(), 3, "the keys are on every primary");
        // KEYS joins every primary's keys; DBSIZE and INFO keyspace sum their counts.
        assert_eq!(sorted_names(conn.call(&[b"KEYS", b"whole:*"])), keys, "{runtime:?}");
        assert_eq!(sorted_names(conn.call(&[b"KEYS", b"whole:1*"])).len(), 11, "whole:1 and whole:10-19");
        assert_eq!(conn.call(&[b"DBSIZE"]), Reply::Int(30));
        let Reply::Bulk(Some(info)) = conn.call(&[b"INFO", b"keyspace"]) else { panic!("INFO keyspace") };
        let info = String::from_utf8_lossy(&info).into_owned();
        assert!(info.contains("db0:keys=30,expires=0,avg_ttl=0"), "{runtime:?}: {info}");
        // RANDOMKEY draws from every primary's keys, not one primary's.
        let mut drawn_on = BTreeSet::new();
        for _ in 0..30 {
            let Reply::Bulk(Some(key)) = conn.call(&[b"RANDOMKEY"]) else { panic!("{runtime:?}: RANDOMKEY") };
            assert!(keys.iter().any(|k| k.as_bytes() == key.as_slice()), "a key of ours: {key:?}");
            drawn_on.insert(map[usize::from(cluster.key_slot(&key))]);
        }
        assert!(drawn_on.len() >= 2, "{runtime:?}: RANDOMKEY drew from {drawn_on:?} only");

        // WAIT counts the replicas of every primary the client wrote to, and answers the fewest.
        let primaries = cluster.primaries();
        let (a, b) = (primaries[0], primaries[1]);
        let key_on =
            |port: u16, label: &str| cluster.keys_where(label, 1, |s| map[usize::from(s)] == port)[0].0.clone();
        let (on_a, on_b) = (key_on(a, "wait:a"), key_on(b, "wait:b"));
        let mut both = proxy.connect();
        assert_eq!(both.call(&[b"SET", on_a.as_bytes(), b"1"]), status("OK"));
        assert_eq!(both.call(&[b"SET", on_b.as_bytes(), b"1"]), status("OK"));
        assert_eq!(both.call(&[b"WAIT", b"1", b"5000"]), Reply::Int(1), "{runtime:?}: each replica has them");
        let started = Instant::now();
        assert_eq!(both.call(&[b"WAIT", b"2", b"300"]), Reply::Int(1), "one replica per primary");
        assert!(started.elapsed() >= Duration::from_millis(300), "WAIT 2 waited for its timeout");
        cluster.kill(cluster.replica_of(b));
        assert_eq!(both.call(&[b"SET", on_b.as_bytes(), b"2"]), status("OK"));
        assert_eq!(both.call(&[b"WAIT", b"1", b"300"]), Reply::Int(0), "{runtime:?}: b's replica is gone");
        let mut only_a = proxy.connect();
        assert_eq!(only_a.call(&[b"SET", on_a.as_bytes(), b"2"]), status("OK"));
        assert_eq!(only_a.call(&[b"WAIT", b"1", b"5000"]), Reply::Int(1), "{runtime:?}: a's replica is there");

        // FLUSHALL empties every primary: then RANDOMKEY has nothing to draw.
        assert_eq!(conn.call(&[b"FLUSHALL"]), status("OK"));
        assert_eq!(conn.call(&[b"RANDOMKEY"]), Reply::Bulk(None), "{runtime:?}");
        assert_eq!(conn.call(&[b"KEYS", b"*"]), Reply::Array(Some(vec![])));
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn reads_to_slaves_reads_from_each_shards_replica_and_a_writer_reads_its_writes_on_the_primary() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut cluster = RedisCluster::start();
        let fields = format!(r#"{}, "mode": "readsToSlaves", "check_period": 100"#, cluster.proxy_fields(5000));
        let proxy = Proxy::start_with_fields(runtime, &fields);
        let keys: Vec<String> = (0..60).map(|i| format!("replica-read:{i}")).collect();
        let mut writer = proxy.connect();
        for key in &keys {
            assert_eq!(writer.call(&[b"SET", key.as_bytes(), key.as_bytes()]), status("OK"), "{runtime:?}");
        }
        assert_eq!(writer.call(&[b"WAIT", b"1", b"5000"]), Reply::Int(1), "{runtime:?}: every replica has them");
        let reset = |port: u16| assert_eq!(RespConn::connect(port).call(&[b"CONFIG", b"RESETSTAT"]), status("OK"));
        cluster.ports().into_iter().for_each(reset);
        // A client that only reads: every GET is answered by a replica, right, and none by a primary.
        let mut reader = proxy.connect();
        let read_all = |conn: &mut RespConn| {
            for key in &keys {
                assert_eq!(conn.call(&[b"GET", key.as_bytes()]), bulk(key.as_bytes()), "{runtime:?} GET {key}");
            }
        };
        read_all(&mut reader);
        let primaries = cluster.primaries();
        let replicas: Vec<u16> = primaries.iter().map(|p| cluster.replica_of(*p)).collect();
        let gets = |ports: &[u16]| ports.iter().map(|p| calls(*p, "get")).sum::<u64>();
        assert_eq!((gets(&primaries), gets(&replicas)), (0, 60), "{runtime:?}: GETs by primaries, by replicas");
        assert!(replicas.iter().all(|r| calls(*r, "get") > 0), "{runtime:?}: every shard's replica read");
        assert!(replicas.iter().all(|r| calls(*r, "readonly") > 0), "{runtime:?}: READONLY on their connections");
        // The writer's reads of the shards it wrote to stay on their primaries (read_your_writes).
        read_all(&mut writer);
        assert_eq!(gets(&primaries), 60, "{runtime:?}: the writer read on the primaries");
        // A replica gone: its shard's reads go to the primary, without an error.
        let lost = replicas[0];
        cluster.kill(lost);
        let before = calls(primaries[0], "get");
        let mut late = proxy.connect();
        read_all(&mut late);
        let on_primary = calls(primaries[0], "get") - before;
        eprintln!("{runtime:?}: with :{lost} gone, {on_primary} reads went to its primary");
        assert!(on_primary > 0, "{runtime:?}: the shard without a replica is read on its primary");
        assert_no_replicaof(&cluster);
    }
}

/// Sends `args` to the proxy and to a standalone reference server and asserts the same reply.
fn same(proxy: &mut RespConn, reference: &mut RespConn, args: &[&[u8]]) -> Reply {
    let want = reference.call(args);
    let got = ask(proxy, args);
    assert_eq!(got, want, "{} through the proxy, against a standalone Redis", show(args));
    got
}

#[test]
fn multi_key_commands_are_split_by_slot_or_refused_across_slots() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let reference = RedisServer::start();
        let mut p = RespConn::try_connect(proxy.port, Duration::from_secs(5)).expect("connect to the proxy");
        let mut r = reference.connect();

        let keys: Vec<String> = (0..40).map(|i| format!("mk:{i}")).collect();
        let k: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let slots = cluster.key_slots(&k);
        let map = cluster.slot_map();
        assert!(slots.iter().collect::<BTreeSet<_>>().len() >= 35, "the keys span many slots");
        assert_eq!(slots.iter().map(|s| map[*s as usize]).collect::<BTreeSet<_>>().len(), 3, "and all 3 primaries");

        let values: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
        let mut mset: Vec<&[u8]> = vec![b"MSET"];
        for (key, value) in k.iter().zip(&values) {
            mset.extend([*key, value.as_bytes()]);
        }
        assert_eq!(same(&mut p, &mut r, &mset), status("OK"));
        // Values in the client's key order, with missing keys and a key twice.
        let mut mget: Vec<&[u8]> = vec![b"MGET"];
        for (i, key) in k.iter().enumerate() {
            mget.push(key);
            if i % 7 == 0 {
                mget.push(b"mk:missing");
            }
        }
        mget.push(k[3]);
        same(&mut p, &mut r, &mget);
        let mut client = proxy.client();
        let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys[..]).query(&mut client).expect("MGET");
        assert_eq!(got, values.iter().cloned().map(Some).collect::<Vec<_>>());
        // MSET with a key twice keeps the last value, as one server would.
        same(&mut p, &mut r, &[b"MSET", k[0], b"first", k[5], b"x", k[0], b"last"]);
        same(&mut p, &mut r, &[b"MGET", k[0], k[5]]);
        // Counts summed over the slots, duplicates counted as Redis counts them.
        let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
        exists.extend(&k);
        exists.extend([k[1], k[1], b"mk:missing"]);
        assert_eq!(same(&mut p, &mut r, &exists), Reply::Int(42));
        let mut touch = exists.clone();
        touch[0] = b"TOUCH";
        same(&mut p, &mut r, &touch);
        let mut del: Vec<&[u8]> = vec![b"DEL"];
        del.extend(&k[..10]);
        del.extend([b"mk:missing", k[2]]);
        assert_eq!(same(&mut p, &mut r, &del), Reply::Int(10));
        let mut unlink: Vec<&[u8]> = vec![b"UNLINK"];
        unlink.extend(&k[10..20]);
        unlink.push(k[15]);
        assert_eq!(same(&mut p, &mut r, &unlink), Reply::Int(10));
        assert_eq!(same(&mut p, &mut r, &exists), Reply::Int(20));
        same(&mut p, &mut r, &mget);

        // Other multi-key commands across slots: Redis Cluster's own error, and nothing written.
        let pair = cluster.keys_where("mk:x", 2, |_| true);
        let pair = if pair[0].1 == pair[1].1 { cluster.keys_where("mk:y", 2, |_| true) } else { pair };
        assert_ne!(pair[0].1, pair[1].1);
        let (a, b) = (pair[0].0.as_bytes(), pair[1].0.as_bytes());
        let crossslot = Reply::Error(CROSSSLOT.into());
        assert_eq!(ask(&mut p, &[b"MSETNX", a, b"1", b, b"2"]), crossslot, "MSETNX across slots");
        assert_eq!(ask(&mut p, &[b"EXISTS", a]), Reply::Int(0));
        assert_eq!(ask(&mut p, &[b"EXISTS", b]), Reply::Int(0));
        assert_eq!(ask(&mut p, &[b"SET", a, b"1"]), status("OK"));
        assert_eq!(ask(&mut p, &[b"RENAME", a, b]), crossslot, "RENAME across slots");
        assert_eq!(ask(&mut p, &[b"GET", a]), bulk(b"1"));
        assert_eq!(ask(&mut p, &[b"SUNIONSTORE", a, b, k[30]]), crossslot, "SUNIONSTORE across slots");
        // With a common hash tag they work.
        assert_eq!(same(&mut p, &mut r, &[b"MSETNX", b"{mk}a", b"1", b"{mk}b", b"2"]), Reply::Int(1));
        assert_eq!(same(&mut p, &mut r, &[b"MSETNX", b"{mk}a", b"3", b"{mk}z", b"4"]), Reply::Int(0));
        assert_eq!(same(&mut p, &mut r, &[b"RENAME", b"{mk}a", b"{mk}c"]), status("OK"));
        same(&mut p, &mut r, &[b"SADD", b"{mk}s1", b"a", b"b"]);
        same(&mut p, &mut r, &[b"SADD", b"{mk}s2", b"b", b"c"]);
        assert_eq!(same(&mut p, &mut r, &[b"SUNIONSTORE", b"{mk}d", b"{mk}s1", b"{mk}s2"]), Reply::Int(3));
        same(&mut p, &mut r, &[b"MGET", b"{mk}a", b"{mk}b", b"{mk}c", b"{mk}z"]);
        assert_no_replicaof(&cluster);
    }
}

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CLUSTER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
        });
        eprintln!("random keys: CLUSTER_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn an_mget_of_100_random_keys_is_one_mget_per_slot_on_its_primary() {
    let _serial = exclusive();
    let mut rng = Rng::new();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let mut conn = proxy.connect();
        // 300 keys stat:0..299 exist; the MGET picks among 600, so about half are missing.
        let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in 0..300 {
            mset.extend([format!("stat:{i}").into_bytes(), i.to_string().into_bytes()]);
        }
        let mset: Vec<&[u8]> = mset.iter().map(Vec::as_slice).collect();
        assert_eq!(conn.call(&mset), status("OK"), "{runtime:?}");

        let mut picked = BTreeSet::new();
        while picked.len() < 100 {
            picked.insert(rng.below(600));
        }
        let mut order: Vec<u64> = picked.into_iter().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let keys: Vec<String> = order.iter().map(|i| format!("stat:{i}")).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let map = cluster.slot_map();
        let owners: BTreeSet<u16> = cluster.key_slots(&refs).iter().map(|s| map[*s as usize]).collect();
        let primaries: BTreeSet<u16> = cluster.primaries().into_iter().collect();
        assert_eq!(owners, primaries, "100 random keys fall on every primary");

        for port in cluster.ports() {
            assert_eq!(RespConn::connect(port).call(&[b"CONFIG", b"RESETSTAT"]), status("OK"));
        }
        let mut mget: Vec<&[u8]> = vec![b"MGET"];
        mget.extend(&refs);
        let want: Vec<Reply> =
            order.iter().map(|i| if *i < 300 { bulk(i.to_string().as_bytes()) } else { Reply::Bulk(None) }).collect();
        assert_eq!(conn.call(&mget), Reply::Array(Some(want)), "{runtime:?}");
        // Redis refuses a multi-key command whose keys span slots even when one node serves them all
        // (-CROSSSLOT), so the split is one MGET per slot: never one per key, and all of a node's parts leave in
        // one write (the runtimes write what one turn queued for a connection with one writev).
        let slots = cluster.key_slots(&refs);
        for port in cluster.ports() {
            let (mgets, gets) = (calls(port, "mget"), calls(port, "get"));
            let owned: BTreeSet<u16> = slots.iter().copied().filter(|s| map[*s as usize] == port).collect();
            eprintln!("{runtime:?}: :{port} got {mgets} MGET, {gets} GET for {} slots", owned.len());
            assert_eq!(
                (mgets, gets),
                (owned.len() as u64, 0),
                "{runtime:?}: one MGET per slot on the slot's primary, none elsewhere, no GET"
            );
        }
    }
}

/// What one load worker did.
#[derive(Debug, Default)]
struct LoadReport {
    /// The worker's keys and the INCRs acknowledged on each.
    acked: Vec<(String, u64)>,
    incrs: u64,
    mgets: u64,
    pipelines: u64,
    errors: Vec<String>,
}

/// Client threads through the proxy, each on its own connection and its own keys, running INCR on one key at a
/// time, MGET of all its keys, and a pipeline of an INCR of each key and an MGET, checking every reply against
/// its own count of acknowledged INCRs (one writer per key: any other reply is an error).
struct Load {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    workers: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts one worker per key set and waits until they have done 50 operations in all.
    fn start(port: u16, key_sets: Vec<Vec<String>>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let workers = key_sets
            .into_iter()
            .map(|keys| {
                let (stop, progress) = (stop.clone(), progress.clone());
                std::thread::spawn(move || load_worker(port, keys, &stop, &progress))
            })
            .collect();
        let load = Load { stop, progress, workers };
        load.wait_for(50);
        load
    }

    fn ops(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Waits until the workers have done `n` more operations (within 30 s).
    fn wait_for(&self, n: u64) {
        let target = self.ops() + n;
        assert!(wait_until(Duration::from_secs(30), || self.ops() >= target), "the load stalled at {}", self.ops());
    }

    fn finish(self) -> Vec<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers.into_iter().map(|w| w.join().expect("load worker")).collect()
    }
}

fn load_worker(port: u16, keys: Vec<String>, stop: &AtomicBool, progress: &AtomicU64) -> LoadReport {
    let mut report = LoadReport::default();
    let mut acked = vec![0u64; keys.len()];
    let counts = |acked: &[u64]| -> Reply {
        Reply::Array(Some(
            acked.iter().map(|n| if *n == 0 { Reply::Bulk(None) } else { bulk(n.to_string().as_bytes()) }).collect(),
        ))
    };
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_bytes()));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut conn = match RespConn::try_connect(port, Duration::from_secs(10)) {
        Ok(conn) => conn,
        Err(e) => {
            report.errors.push(format!("connect: {e}"));
            return report;
        }
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 1_000_000 {
        let outcome: std::io::Result<()> = (|| {
            match i % 8 {
                3 => {
                    let reply = conn.try_call(&mget)?;
                    report.mgets += 1;
                    if reply != counts(&acked) {
                        report.errors.push(format!("MGET {keys:?}: {reply:?}, acknowledged {acked:?}"));
                    }
                }
                7 => {
                    let mut batch = Vec::new();
                    for key in &keys {
                        batch.extend_from_slice(&encode_command(&[b"INCR", key.as_bytes()]));
                    }
                    batch.extend_from_slice(&encode_command(&mget));
                    conn.send_raw(&batch);
                    for (k, key) in keys.iter().enumerate() {
                        let reply = conn.try_read_reply()?;
                        check_incr(&mut report, key, &mut acked[k], reply);
                    }
                    let reply = conn.try_read_reply()?;
                    report.pipelines += 1;
                    if reply != counts(&acked) {
                        report.errors.push(format!("pipelined MGET {keys:?}: {reply:?}, acknowledged {acked:?}"));
                    }
                }
                _ => {
                    let k = i % keys.len();
                    let reply = conn.try_call(&[b"INCR", keys[k].as_bytes()])?;
                    check_incr(&mut report, &keys[k], &mut acked[k], reply);
                }
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            // The connection's state is unknown now: stop this worker (its last INCR may or may not count).
            report.errors.push(format!("I/O error after {i} operations: {e}"));
            break;
        }
        progress.fetch_add(1, Ordering::Relaxed);
        i += 1;
        // Light: a 2-core machine also runs 6 nodes, the proxy and redis-cli.
        std::thread::sleep(Duration::from_millis(2));
    }
    report.acked = keys.into_iter().zip(acked).collect();
    report
}

fn check_incr(report: &mut LoadReport, key: &str, acked: &mut u64, reply: Reply) {
    report.incrs += 1;
    match reply {
        Reply::Int(n) if n as u64 == *acked + 1 => *acked += 1,
        Reply::Int(n) => {
            report.errors.push(format!("INCR {key}: {n}, after {acked} acknowledged"));
            *acked = n as u64;
        }
        other => report.errors.push(format!("INCR {key}: {other:?}")),
    }
}

/// Asserts that no worker saw an error and that every key holds its acknowledged INCRs, read through the proxy
/// and on the primary serving its slot.
fn check_load(runtime: Runtime, cluster: &RedisCluster, proxy: &Proxy, reports: &[LoadReport]) {
    let errors: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    let (incrs, mgets, pipelines): (u64, u64, u64) =
        reports.iter().fold((0, 0, 0), |(a, b, c), r| (a + r.incrs, b + r.mgets, c + r.pipelines));
    eprintln!("{runtime:?}: load: {incrs} INCR, {mgets} MGET, {pipelines} pipelines; {} errors", errors.len());
    assert!(
        errors.is_empty(),
        "{runtime:?}: {} client errors, the first: {:#?}\nproxy log tail:\n{}",
        errors.len(),
        &errors[..errors.len().min(10)],
        tail(&proxy.log(), 40)
    );
    let map = cluster.slot_map();
    let mut conn = proxy.connect();
    for (key, n) in reports.iter().flat_map(|r| &r.acked) {
        let want = if *n == 0 { Reply::Bulk(None) } else { bulk(n.to_string().as_bytes()) };
        assert_eq!(conn.call(&[b"GET", key.as_bytes()]), want, "{runtime:?}: {key} through the proxy");
        let owner = map[cluster.key_slot(key.as_bytes()) as usize];
        assert_eq!(RespConn::connect(owner).call(&[b"GET", key.as_bytes()]), want, "{runtime:?}: {key} on :{owner}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Key sets for `threads` workers: `inside` keys in `slots` and one key outside, each.
fn key_sets(
    cluster: &RedisCluster,
    label: &str,
    threads: usize,
    inside: usize,
    slots: &BTreeSet<u16>,
) -> Vec<Vec<String>> {
    let ins = cluster.keys_where(&format!("{label}:in"), threads * inside, |s| slots.contains(&s));
    let outs = cluster.keys_where(&format!("{label}:out"), threads, |s| !slots.contains(&s));
    (0..threads)
        .map(|t| {
            let mut keys: Vec<String> = ins[t * inside..(t + 1) * inside].iter().map(|(k, _)| k.clone()).collect();
            keys.push(outs[t].0.clone());
            keys
        })
        .collect()
}

#[test]
fn a_reshard_of_1000_slots_under_load_costs_no_error_and_no_increment() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let primaries = cluster.primaries();
        let (from, to) = (primaries[0], primaries[1]);
        // redis-cli moves the source's lowest slots: the workers' keys are mostly in those.
        let moving: BTreeSet<u16> = cluster.slots_of(from)[..1_000].iter().copied().collect();
        let load = Load::start(proxy.port, key_sets(&cluster, "reshard", 8, 3, &moving));
        let before = load.ops();
        let moved: BTreeSet<u16> = cluster.reshard(from, to, 1_000).into_iter().collect();
        let during = load.ops() - before;
        assert_eq!(moved, moving);
        // The load goes on against the new map.
        load.wait_for(200);
        let reports = load.finish();
        eprintln!("{runtime:?}: {during} operations during the reshard");
        assert!(during > 0, "the load ran during the reshard");
        check_load(runtime, &cluster, &proxy, &reports);
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn planned_failovers_under_load_cost_no_error_whether_the_proxy_or_an_operator_asks() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let admin_port = free_port();
        let fields = format!(r#"{}, "admin_listen": "127.0.0.1:{admin_port}""#, cluster.proxy_fields(5000));
        let proxy = Proxy::start_with_fields(runtime, &fields);
        let old = cluster.primaries()[0];
        let replica = cluster.replica_of(old);
        let shard: BTreeSet<u16> = cluster.slots_of(old).into_iter().collect();
        let load = Load::start(proxy.port, key_sets(&cluster, "failover", 8, 3, &shard));
        cluster.settled();
        // Through the proxy: it sends CLUSTER FAILOVER to the replica and answers once its map shows the result.
        let before = load.ops();
        let mut admin = RespConn::connect(admin_port);
        let target = format!("127.0.0.1:{replica}");
        let asked = Instant::now();
        let reply = admin.call(&[b"PROXY", b"FAILOVER", target.as_bytes()]);
        let answered_in = asked.elapsed();
        let done = format!("OK done: {target} is the primary of {} slots now", shard.len());
        assert_eq!(reply, status(&done), "{runtime:?}: {}", tail(&proxy.log(), 20));
        assert!(cluster.own_view(replica).is_some_and(|v| v.is_primary()), "{runtime:?}: :{replica} leads");
        cluster.settled();
        let through_proxy = load.ops() - before;
        let reply = admin.call(&[b"PROXY", b"FAILOVER", target.as_bytes()]);
        let refused = Reply::Error(format!("ERR cannot fail over: {target} is a primary already"));
        assert_eq!(reply, refused, "{runtime:?}");
        let add = admin.call(&[b"PROXY", b"ADD", b"127.0.0.1:1"]);
        assert!(matches!(&add, Reply::Error(e) if e.contains("the cluster decides its nodes")), "{add:?}");
        // Behind the proxy's back: an operator sends CLUSTER FAILOVER to the old primary, now a replica.
        let before = load.ops();
        cluster.failover(old);
        let by_operator = load.ops() - before;
        load.wait_for(200);
        let reports = load.finish();
        eprintln!(
            "{runtime:?}: PROXY FAILOVER answered in {} ms; {through_proxy} operations during it, {by_operator} \
             during CLUSTER FAILOVER",
            answered_in.as_millis()
        );
        assert_eq!(cluster.owner_of_slot(*shard.first().expect("a slot")), old);
        check_load(runtime, &cluster, &proxy, &reports);
        // The cluster failed over; the proxy sent no REPLICAOF of its own.
        assert_no_replicaof(&cluster);
    }
}

/// One client of one shard during a primary's outage: what it sent, when, and what came back.
struct Answer {
    sent: Instant,
    answered: Instant,
    reply: Result<Reply, String>,
    value: u64,
}

/// Writes and reads `key` through the proxy in a loop (SET to a counter, then GET of it), recording each answer,
/// until `stop` or 120 s. An I/O error ends the loop.
fn shard_client(port: u16, key: String, stop: Arc<AtomicBool>, progress: Arc<AtomicU64>) -> JoinHandle<Vec<Answer>> {
    std::thread::spawn(move || {
        let mut answers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let Ok(mut conn) = RespConn::try_connect(port, Duration::from_secs(15)) else {
            let now = Instant::now();
            return vec![Answer { sent: now, answered: now, reply: Err("connect".into()), value: 0 }];
        };
        let mut value = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && answers.len() < 1_000_000 {
            value += 1;
            let text = value.to_string();
            let sent = Instant::now();
            let reply = conn.try_call(&[b"SET", key.as_bytes(), text.as_bytes()]).map_err(|e| e.to_string());
            let broken = reply.is_err();
            answers.push(Answer { sent, answered: Instant::now(), reply, value });
            if broken {
                break;
            }
            if answers.last().is_some_and(|a| a.reply == Ok(status("OK"))) {
                let sent = Instant::now();
                let reply = conn.try_call(&[b"GET", key.as_bytes()]).map_err(|e| e.to_string());
                let reply = reply.map(|r| if r == bulk(text.as_bytes()) { status("OK") } else { r });
                let broken = reply.is_err();
                answers.push(Answer { sent, answered: Instant::now(), reply, value });
                if broken {
                    break;
                }
            }
            progress.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        answers
    })
}

#[test]
fn a_sigkilled_primary_stalls_only_its_own_shard_until_the_cluster_promotes_its_replica() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        // Redis's default cluster-require-full-coverage yes makes every node answer -CLUSTERDOWN from the moment
        // the dead primary is marked failed until its replica takes over (about 0.7 s, measured), to any client:
        // the other shards can answer only with full coverage off.
        let mut cluster = RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]);
        let proxy = proxy_for(runtime, &cluster);
        let primaries = cluster.primaries();
        let victim = primaries[0];
        let replica = cluster.replica_of(victim);
        let slots: Vec<BTreeSet<u16>> = primaries.iter().map(|p| cluster.slots_of(*p).into_iter().collect()).collect();
        let keys: Vec<String> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| cluster.keys_where(&format!("kill{i}"), 1, |slot| s.contains(&slot))[0].0.clone())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let clients: Vec<JoinHandle<Vec<Answer>>> = keys
            .iter()
            .zip(&progress)
            .map(|(key, p)| shard_client(proxy.port, key.clone(), stop.clone(), p.clone()))
            .collect();
        let all_progress = |n: u64| progress.iter().all(|p| p.load(Ordering::Relaxed) >= n);
        assert!(wait_until(Duration::from_secs(30), || all_progress(20)), "the shard clients did not start");

        let killed_at = Instant::now();
        cluster.kill(victim);
        assert_eq!(cluster.wait_for_promotion(victim), replica);
        let promoted_at = Instant::now();
        // The dead shard's writes resume, and the other shards' clients go on.
        let resumed = |p: &AtomicU64, from: u64, n: u64| p.load(Ordering::Relaxed) >= from + n;
        let at_promotion: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        let going_on = wait_until(Duration::from_secs(10), || {
            progress.iter().zip(&at_promotion).all(|(p, from)| resumed(p, *from, 20))
        });
        stop.store(true, Ordering::Relaxed);
        let answers: Vec<Vec<Answer>> = clients.into_iter().map(|c| c.join().expect("shard client")).collect();
        assert!(going_on, "{runtime:?}: not every shard's client went on after the promotion: {at_promotion:?}");

        // Other shards: no error, and answers all through the outage, never 1 s apart.
        for (shard, answers) in answers.iter().enumerate().skip(1) {
            let errors: Vec<_> = answers.iter().filter(|a| a.reply != Ok(status("OK"))).collect();
            assert!(
                errors.is_empty(),
                "{runtime:?}: shard :{} answered {} errors, the first {:?}",
                primaries[shard],
                errors.len(),
                errors[0].reply
            );
            let mut times: Vec<Instant> = vec![killed_at];
            times.extend(answers.iter().map(|a| a.answered).filter(|t| (killed_at..promoted_at).contains(t)));
            times.push(promoted_at);
            let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
            eprintln!(
                "{runtime:?}: shard :{}: {} answers in the {} ms outage, longest gap {} ms",
                primaries[shard],
                times.len() - 2,
                (promoted_at - killed_at).as_millis(),
                longest.as_millis()
            );
            assert!(longest < Duration::from_secs(1), "{runtime:?}: shard :{} stalled {longest:?}", primaries[shard]);
        }

        // The dead shard: held (or refused with CLUSTERDOWN) during the outage, answered soon after the promotion,
        // and never refused after it.
        let dead = &answers[0];
        let ok = Ok(status("OK"));
        // A write on its way when the primary died may or may not have run, and its client is told so: only the
        // one in flight at the kill (the client sends one request at a time). A read is sent again instead.
        let lost = |a: &Answer| {
            a.sent < promoted_at && matches!(&a.reply, Ok(Reply::Error(e)) if e.contains("may or may not have run"))
        };
        assert!(dead.iter().filter(|a| lost(a)).count() <= 1, "{runtime:?}: more than the write in flight was lost");
        for a in dead.iter().filter(|a| a.reply != ok && !lost(a)) {
            let refused_in_outage = a.answered < promoted_at + Duration::from_secs(2)
                && matches!(&a.reply, Ok(Reply::Error(e)) if e.starts_with("CLUSTERDOWN"));
            assert!(
                refused_in_outage,
                "{runtime:?}: the dead shard's SET/GET of {}, sent {} ms after the kill, answered {:?} {} ms after it",
                a.value,
                a.sent.saturating_duration_since(killed_at).as_millis(),
                a.reply,
                a.answered.saturating_duration_since(killed_at).as_millis()
            );
        }
        // The outage as its client saw it: the longest time between two successful answers.
        let oks: Vec<Instant> = dead.iter().filter(|a| a.reply == ok).map(|a| a.answered).collect();
        let outage = oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        let next = dead
            .iter()
            .find(|a| a.answered >= promoted_at)
            .expect("the dead shard's client was answered after the promotion");
        let late = next.answered - promoted_at;
        eprintln!(
            "{runtime:?}: dead shard: {} refusals, {} ms without a successful answer; its first answer after the \
             cluster had promoted came {} ms after",
            dead.iter().filter(|a| a.reply != ok).count(),
            outage.as_millis(),
            late.as_millis()
        );
        assert_eq!(next.reply, ok, "{runtime:?}: the dead shard's first answer after the promotion");
        assert!(late < Duration::from_secs(2), "{runtime:?}: writes resumed {late:?} after the promotion");
        // The last acknowledged write is there.
        let last = dead.iter().rev().find(|a| a.reply == Ok(status("OK"))).expect("an acknowledged write");
        assert_eq!(proxy.connect().call(&[b"GET", keys[0].as_bytes()]), bulk(last.value.to_string().as_bytes()));
        assert_eq!(
            RespConn::connect(replica).call(&[b"GET", keys[0].as_bytes()]),
            bulk(last.value.to_string().as_bytes())
        );
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn a_frozen_migration_is_invisible_to_clients() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let slot = cluster.key_slot(b"{frozen}");
        let src = cluster.owner_of_slot(slot);
        let dst = *cluster.primaries().iter().find(|p| **p != src).expect("another primary");
        let other = cluster.keys_where("frozen-other", 1, |s| s != slot)[0].0.clone();
        let mut p = RespConn::try_connect(proxy.port, Duration::from_secs(5)).expect("connect to the proxy");
        assert_eq!(ask(&mut p, &[b"MSET", b"{frozen}moved", b"m", b"{frozen}stay", b"s"]), status("OK"));
        assert_eq!(ask(&mut p, &[b"SET", other.as_bytes(), b"o"]), status("OK"));
        let array = |items: &[&[u8]]| Reply::Array(Some(items.iter().map(|v| bulk(v)).collect()));

        // Both sides marked, no key moved yet.
        cluster.freeze_migration(slot, src, dst);
        assert_eq!(ask(&mut p, &[b"GET", b"{frozen}moved"]), bulk(b"m"), "{runtime:?}");
        assert_eq!(ask(&mut p, &[b"MGET", b"{frozen}moved", b"{frozen}stay"]), array(&[b"m", b"s"]));

        // One key moved: the source answers ASK for it and TRYAGAIN for a multi-key command over both. The
        // target, after ASKING, answers TRYAGAIN too, for as long as the slot stays open (see the harness test):
        // retrying alone never answers that MGET; it has to be split further, by key.
        cluster.migrate_key(src, dst, b"{frozen}moved");
        assert_eq!(ask(&mut p, &[b"GET", b"{frozen}moved"]), bulk(b"m"), "{runtime:?}: the moved key");
        assert_eq!(ask(&mut p, &[b"GET", b"{frozen}stay"]), bulk(b"s"), "{runtime:?}: the unmoved key");
        assert_eq!(ask(&mut p, &[b"SET", b"{frozen}new", b"n"]), status("OK"), "{runtime:?}: a new key");
        assert_eq!(ask(&mut p, &[b"GET", b"{frozen}new"]), bulk(b"n"));
        assert_eq!(
            ask(&mut p, &[b"MGET", b"{frozen}moved", b"{frozen}stay"]),
            array(&[b"m", b"s"]),
            "{runtime:?}: MGET of a moved and an unmoved key"
        );
        assert_eq!(
            ask(&mut p, &[b"MGET", other.as_bytes(), b"{frozen}stay", b"{frozen}new", b"{frozen}moved"]),
            array(&[b"o", b"s", b"n", b"m"])
        );
        assert_eq!(ask(&mut p, &[b"EXISTS", b"{frozen}moved", b"{frozen}stay", b"{frozen}new"]), Reply::Int(3));
        let mut client = proxy.client();
        let got: Vec<Option<String>> =
            redis::cmd("MGET").arg(&["{frozen}stay", "{frozen}moved"][..]).query(&mut client).expect("MGET");
        assert_eq!(got, vec![Some("s".to_string()), Some("m".to_string())]);

        // The new key went where Redis sends it (the target, by ASK), and the proxy left the slot open.
        let mut on_dst = RespConn::connect(dst);
        assert_eq!(on_dst.call(&[b"ASKING"]), status("OK"));
        assert_eq!(on_dst.call(&[b"EXISTS", b"{frozen}new"]), Reply::Int(1));
        let src_view = cluster.own_view(src).expect("src answers");
        assert_eq!(src_view.open_slots, vec![format!("[{slot}->-{}]", cluster.node_id(dst))]);
        let dst_view = cluster.own_view(dst).expect("dst answers");
        assert_eq!(dst_view.open_slots, vec![format!("[{slot}-<-{}]", cluster.node_id(src))]);
    }
}

/// `tests/clients` in the source tree.
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

#[test]
fn redis_py_plain_client_works_across_slots() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        for protocol in ["2", "3"] {
            let prefix = format!("py{protocol}");
            let output: Output = Command::new("python3")
                .args(["py/cluster_check.py", &proxy.port.to_string(), protocol, &prefix])
                .current_dir(clients_dir())
                .output()
                .unwrap_or_else(|e| panic!("cannot run python3 (is it installed? .ci/run installs it): {e}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{runtime:?}: cluster_check.py RESP{protocol} failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            eprintln!("{runtime:?}: {}", stdout.trim());
            // The keys it leaves are in the cluster, each on its slot's primary.
            let keys: Vec<String> = (0..300).map(|i| format!("{prefix}:kept:{i}")).collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let map = cluster.slot_map();
            for ((i, key), slot) in keys.iter().enumerate().zip(cluster.key_slots(&refs)) {
                let owner = map[slot as usize];
                assert_eq!(RespConn::connect(owner).call(&[b"GET", key.as_bytes()]), bulk(i.to_string().as_bytes()));
            }
        }
        assert_eq!(SLOTS, cluster.slot_map().len());
    }
}

#[test]
fn transactions_run_on_their_slots_primary_and_follow_a_moved_slot() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        // A long refresh period: the move below is learnt from the MOVED the transaction meets.
        let proxy = Proxy::start_with_fields(runtime, &cluster.proxy_fields(60_000));
        let mut conn = proxy.connect();
        let queued = status("QUEUED");
        // MULTI ... EXEC on keys of one slot: queued here, run atomically there.
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{tx}a", b"1"]), queued);
        assert_eq!(ask(&mut conn, &[b"INCR", b"{tx}a"]), queued);
        assert_eq!(ask(&mut conn, &[b"GET", b"{tx}a"]), queued);
        let exec = ask(&mut conn, &[b"EXEC"]);
        assert_eq!(exec, Reply::Array(Some(vec![status("OK"), Reply::Int(2), bulk(b"2")])), "{runtime:?}");
        let owner = cluster.owner_of_slot(cluster.key_slot(b"{tx}a"));
        assert_eq!(RespConn::connect(owner).call(&[b"GET", b"{tx}a"]), bulk(b"2"), "run on the slot's primary");
        // Keys of two slots: refused while queuing, and EXEC aborts, as Redis Cluster does.
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{tx}b", b"1"]), queued);
        assert_eq!(ask(&mut conn, &[b"SET", b"{other}c", b"1"]), Reply::Error(CROSSSLOT.into()));
        let aborted = ask(&mut conn, &[b"EXEC"]);
        assert!(matches!(&aborted, Reply::Error(e) if e.starts_with("EXECABORT")), "{runtime:?}: {aborted:?}");
        assert_eq!(RespConn::connect(owner).call(&[b"EXISTS", b"{tx}b"]), Reply::Int(0), "nothing ran");
        // DISCARD drops it; an empty transaction answers an empty array.
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{tx}b", b"1"]), queued);
        assert_eq!(ask(&mut conn, &[b"DISCARD"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Array(Some(vec![])));
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Error("ERR EXEC without MULTI".into()));
        // The slot moves behind the proxy's back: the transaction meets MOVED while queuing on the old owner,
        // which aborts it there; the proxy sends it again to the new owner, and the client sees one EXEC.
        let slot = cluster.key_slot(b"{tx}a");
        let to = cluster.primaries().into_iter().find(|p| *p != owner).expect("another primary");
        let moved = cluster.reshard_slot(slot, owner, to);
        assert_eq!(moved, to);
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"INCR", b"{tx}a"]), queued);
        assert_eq!(ask(&mut conn, &[b"INCR", b"{tx}a"]), queued);
        let exec = ask(&mut conn, &[b"EXEC"]);
        assert_eq!(exec, Reply::Array(Some(vec![Reply::Int(3), Reply::Int(4)])), "{runtime:?}");
        assert_eq!(RespConn::connect(to).call(&[b"GET", b"{tx}a"]), bulk(b"4"));
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn watch_guards_a_transaction_on_its_keys_primary_and_a_moved_slot_fails_it_safely() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = Proxy::start_with_fields(runtime, &cluster.proxy_fields(60_000));
        let (mut conn, mut other) = (proxy.connect(), proxy.connect());
        let queued = status("QUEUED");
        assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"1"]), status("OK"));
        // Unchanged since WATCH: EXEC runs.
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k", b"{w}j"]), status("OK"), "{runtime:?}");
        assert_eq!(ask(&mut conn, &[b"GET", b"{w}k"]), bulk(b"1"));
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"2"]), queued);
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Array(Some(vec![status("OK")])), "{runtime:?}");
        // Changed by another client after WATCH: EXEC answers null and nothing runs.
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k"]), status("OK"));
        assert_eq!(ask(&mut other, &[b"SET", b"{w}k", b"other"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"3"]), queued);
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Array(None), "{runtime:?}: the watched key changed");
        assert_eq!(ask(&mut conn, &[b"GET", b"{w}k"]), bulk(b"other"));
        // UNWATCH forgets it; watched keys of two slots are refused, as Redis Cluster refuses them.
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"UNWATCH"]), status("OK"));
        assert_eq!(ask(&mut other, &[b"SET", b"{w}k", b"again"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"4"]), queued);
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Array(Some(vec![status("OK")])), "{runtime:?}: unwatched");
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k", b"{x}k"]), Reply::Error(CROSSSLOT.into()));
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{x}k"]), Reply::Error(CROSSSLOT.into()), "another slot later");
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(
            ask(&mut conn, &[b"WATCH", b"{w}k"]),
            Reply::Error("ERR Command not allowed inside a transaction".into())
        );
        let aborted = ask(&mut conn, &[b"EXEC"]);
        assert!(matches!(&aborted, Reply::Error(e) if e.starts_with("EXECABORT")), "{runtime:?}: {aborted:?}");
        // The slot moves after WATCH: the EXEC cannot be checked where the key was watched, so it answers null
        // (nothing ran); the client's next try runs on the new owner.
        let slot = cluster.key_slot(b"{w}k");
        let owner = cluster.owner_of_slot(slot);
        let to = cluster.primaries().into_iter().find(|p| *p != owner).expect("another primary");
        assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k"]), status("OK"));
        assert_eq!(cluster.reshard_slot(slot, owner, to), to);
        assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
        assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"5"]), queued);
        assert_eq!(ask(&mut conn, &[b"EXEC"]), Reply::Array(None), "{runtime:?}: the slot moved");
        assert_eq!(RespConn::connect(to).call(&[b"GET", b"{w}k"]), bulk(b"4"), "nothing ran");
        let mut tries = 0;
        let done = loop {
            tries += 1;
            assert!(tries <= 3, "{runtime:?}: the retries kept failing");
            assert_eq!(ask(&mut conn, &[b"WATCH", b"{w}k"]), status("OK"));
            assert_eq!(ask(&mut conn, &[b"MULTI"]), status("OK"));
            assert_eq!(ask(&mut conn, &[b"SET", b"{w}k", b"5"]), queued);
            match ask(&mut conn, &[b"EXEC"]) {
                Reply::Array(None) => continue,
                other => break other,
            }
        };
        assert_eq!(done, Reply::Array(Some(vec![status("OK")])), "{runtime:?}");
        assert_eq!(RespConn::connect(to).call(&[b"GET", b"{w}k"]), bulk(b"5"));
        // Optimistic locking under contention: 4 redis-crate clients each add 25 to one counter with
        // redis::transaction (WATCH, GET, MULTI, SET, EXEC, again on a null EXEC): no increment is lost. The slot
        // moves once more first, behind the proxy's back, so that their first WATCHes meet MOVED: each client's
        // retry must then go to the new owner (it once went on retrying on the old one's connection forever).
        let owner = cluster.owner_of_slot(slot);
        let to = cluster.primaries().into_iter().find(|p| *p != owner).expect("another primary");
        assert_eq!(cluster.reshard_slot(slot, owner, to), to);
        let workers: Vec<JoinHandle<u64>> = (0..4)
            .map(|_| {
                let mut client = proxy.client();
                std::thread::spawn(move || {
                    let mut retries = 0u64;
                    for _ in 0..25 {
                        let _: () = redis::transaction(&mut client, &["{w}counter"], |con, pipe| {
                            let n: Option<u64> = redis::cmd("GET").arg("{w}counter").query(con)?;
                            let result: Option<()> = pipe.set("{w}counter", n.unwrap_or(0) + 1).ignore().query(con)?;
                            retries += u64::from(result.is_none());
                            Ok(result)
                        })
                        .expect("a transaction");
                    }
                    retries
                })
            })
            .collect();
        let retries: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        eprintln!("{runtime:?}: 100 increments by WATCH/MULTI/EXEC, {retries} retried after a null EXEC");
        assert_eq!(ask(&mut conn, &[b"GET", b"{w}counter"]), bulk(b"100"), "{runtime:?}: no increment lost");
        assert_no_replicaof(&cluster);
    }
}

/// A pub/sub message as a RESP2 subscriber receives it.
fn message(channel: &[u8], payload: &[u8]) -> Reply {
    Reply::Array(Some(vec![bulk(b"message"), bulk(channel), bulk(payload)]))
}

/// Sends `publish` (a `PUBLISH` or `SPUBLISH`) until `subscriber` gets a frame (a node lost or a slot moved may
/// cost the first ones), and returns that first frame; None after 15 s.
fn first_frame_after(publisher: &mut RespConn, subscriber: &mut RespConn, publish: &[&[u8]]) -> Option<Reply> {
    let mut first = None;
    wait_until(Duration::from_secs(15), || {
        let _ = publisher.try_call(publish);
        match subscriber.try_read_reply() {
            Ok(reply) => {
                first = Some(reply);
                true
            }
            Err(_) => false,
        }
    });
    first
}

#[test]
fn a_subscriber_whose_node_dies_is_subscribed_again_elsewhere_and_misses_no_later_message() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        // A short read timeout: the loop below waits for a message that may not come each time.
        let mut subscriber = RespConn::try_connect(proxy.port, Duration::from_millis(300)).expect("connect");
        subscriber.send(&[b"SUBSCRIBE", b"news", b"weather"]);
        for (n, channel) in [(1, &b"news"[..]), (2, b"weather")] {
            let confirmation = Reply::Array(Some(vec![bulk(b"subscribe"), bulk(channel), Reply::Int(n)]));
            assert_eq!(subscriber.read_reply(), confirmation, "{runtime:?}");
        }
        subscriber.send(&[b"PSUBSCRIBE", b"sport.*"]);
        let confirmation = Reply::Array(Some(vec![bulk(b"psubscribe"), bulk(b"sport.*"), Reply::Int(3)]));
        assert_eq!(subscriber.read_reply(), confirmation);
        let mut publisher = proxy.connect();
        // In a cluster PUBLISH counts the receivers on the node it reached only: the count is not checked.
        let published = |publisher: &mut RespConn, channel: &[u8], payload: &[u8]| {
            let reply = ask(publisher, &[b"PUBLISH", channel, payload]);
            assert!(matches!(reply, Reply::Int(_)), "PUBLISH: {reply:?}");
        };
        published(&mut publisher, b"news", b"before");
        assert_eq!(subscriber.read_reply(), message(b"news", b"before"));
        // The primary holding the subscriber connection (the one with subscriptions in CLIENT LIST) dies.
        let holder = cluster
            .primaries()
            .into_iter()
            .find(|p| {
                let Reply::Bulk(Some(list)) = RespConn::connect(*p).call(&[b"CLIENT", b"LIST"]) else { return false };
                String::from_utf8_lossy(&list).lines().any(|l| l.contains(" sub=2 psub=1 "))
            })
            .expect("a primary holds the subscriber connection");
        cluster.kill(holder);
        // Published until it arrives (a PUBLISH meeting the dead node may fail): the first frame the subscriber
        // gets is a message, never the confirmations of its second subscription.
        let first = first_frame_after(&mut publisher, &mut subscriber, &[b"PUBLISH", b"weather", b"after"]);
        assert!(first.is_some(), "{runtime:?}: no message after the node died: {}", tail(&proxy.log(), 20));
        assert_eq!(first, Some(message(b"weather", b"after")), "{runtime:?}");
        assert!(proxy.log().contains("subscriber connection was lost with its node; its 3 channels"), "{runtime:?}");
        // Still subscribed to all three, on one connection, which still takes commands.
        let mut drained = 0;
        while subscriber.try_read_reply().is_ok() {
            drained += 1;
            assert!(drained < 100, "the duplicates stop");
        }
        published(&mut publisher, b"sport.tennis", b"ace");
        let pmessage =
            Reply::Array(Some(vec![bulk(b"pmessage"), bulk(b"sport.*"), bulk(b"sport.tennis"), bulk(b"ace")]));
        assert_eq!(subscriber.read_reply(), pmessage);
        published(&mut publisher, b"news", b"later");
        assert_eq!(subscriber.read_reply(), message(b"news", b"later"));
        subscriber.send(&[b"UNSUBSCRIBE", b"news"]);
        let unsubscribed = Reply::Array(Some(vec![bulk(b"unsubscribe"), bulk(b"news"), Reply::Int(2)]));
        assert_eq!(subscriber.read_reply(), unsubscribed, "{runtime:?}");
        assert_no_replicaof(&cluster);
    }
}

/// A shard channel message as a RESP2 subscriber receives it.
fn smessage(channel: &[u8], payload: &[u8]) -> Reply {
    Reply::Array(Some(vec![bulk(b"smessage"), bulk(channel), bulk(payload)]))
}

/// A sharded (un)subscription confirmation as a RESP2 subscriber receives it.
fn shard_confirmation(kind: &[u8], channel: &[u8], count: i64) -> Reply {
    Reply::Array(Some(vec![bulk(kind), bulk(channel), Reply::Int(count)]))
}

#[test]
fn shard_channels_are_followed_on_their_slots_primary_through_a_reshard_and_a_sigkill() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let primaries = cluster.primaries();
        // Two channels on two primaries, and a third primary to move the first one's slot to.
        let (moving, moving_slot) = cluster.keys_where("orders", 1, |_| true)[0].clone();
        let from = cluster.owner_of_slot(moving_slot);
        let (killed, killed_slot) = cluster.keys_where("prices", 1, |s| cluster.owner_of_slot(s) != from)[0].clone();
        let holder = cluster.owner_of_slot(killed_slot);
        let to = *primaries.iter().find(|p| **p != from && **p != holder).expect("a third primary");
        let (moving, killed) = (moving.as_bytes(), killed.as_bytes());

        let mut subscriber = RespConn::try_connect(proxy.port, Duration::from_millis(300)).expect("connect");
        subscriber.send(&[b"SSUBSCRIBE", moving]);
        assert_eq!(subscriber.read_reply(), shard_confirmation(b"ssubscribe", moving, 1), "{runtime:?}");
        // The second line's node counts one channel; the client is told its own count, as one Redis would.
        subscriber.send(&[b"SSUBSCRIBE", killed]);
        assert_eq!(subscriber.read_reply(), shard_confirmation(b"ssubscribe", killed, 2), "{runtime:?}");
        let mut refused = proxy.connect();
        assert_eq!(refused.call(&[b"SSUBSCRIBE", b"a", b"b"]), Reply::Error(CROSSSLOT.into()), "{runtime:?}");
        let mut publisher = proxy.connect();
        assert_eq!(ask(&mut publisher, &[b"SPUBLISH", moving, b"one"]), Reply::Int(1), "{runtime:?}");
        assert_eq!(subscriber.read_reply(), smessage(moving, b"one"));
        assert_eq!(ask(&mut publisher, &[b"SPUBLISH", killed, b"two"]), Reply::Int(1));
        assert_eq!(subscriber.read_reply(), smessage(killed, b"two"));

        // The slot moves: its old owner drops the channel with a `sunsubscribe` of its own, which the client
        // never sees; the next frame it gets is a message published on the new owner.
        cluster.reshard_slot(moving_slot, from, to);
        let first = first_frame_after(&mut publisher, &mut subscriber, &[b"SPUBLISH", moving, b"moved"]);
        assert_eq!(first, Some(smessage(moving, b"moved")), "{runtime:?}: {}", tail(&proxy.log(), 20));
        let on_new_owner = cluster.connect(to).call(&[b"PUBSUB", b"SHARDNUMSUB", moving]);
        assert_eq!(on_new_owner, Reply::Array(Some(vec![bulk(moving), Reply::Int(1)])), "{runtime:?}");

        // The other channel's primary is SIGKILLed: followed again on the replica the cluster promotes.
        cluster.kill(holder);
        let promoted = cluster.wait_for_promotion(holder);
        let first = first_frame_after(&mut publisher, &mut subscriber, &[b"SPUBLISH", killed, b"promoted"]);
        assert_eq!(first, Some(smessage(killed, b"promoted")), "{runtime:?}: {}", tail(&proxy.log(), 20));
        let on_promoted = cluster.connect(promoted).call(&[b"PUBSUB", b"SHARDNUMSUB", killed]);
        assert_eq!(on_promoted, Reply::Array(Some(vec![bulk(killed), Reply::Int(1)])), "{runtime:?}");
        assert!(proxy.log().contains("shard channel(s) lost their node or slot"), "{runtime:?}");
        // Duplicates of the messages published while waiting, then nothing else.
        let mut drained = 0;
        while let Ok(reply) = subscriber.try_read_reply() {
            assert!(reply == smessage(killed, b"promoted") || reply == smessage(moving, b"moved"), "{reply:?}");
            drained += 1;
            assert!(drained < 100, "the duplicates stop");
        }

        // Leaving a channel is answered with the client's count, and its messages stop at once.
        subscriber.send(&[b"SUNSUBSCRIBE", moving]);
        assert_eq!(subscriber.read_reply(), shard_confirmation(b"sunsubscribe", moving, 1), "{runtime:?}");
        assert!(wait_until(Duration::from_secs(5), || {
            cluster.connect(to).call(&[b"PUBSUB", b"SHARDNUMSUB", moving])
                == Reply::Array(Some(vec![bulk(moving), Reply::Int(0)]))
        }));
        assert_eq!(ask(&mut publisher, &[b"SPUBLISH", moving, b"gone"]), Reply::Int(0));
        assert_eq!(ask(&mut publisher, &[b"SPUBLISH", killed, b"last"]), Reply::Int(1));
        assert_eq!(subscriber.read_reply(), smessage(killed, b"last"), "{runtime:?}: nothing of the channel left");
        subscriber.send(&[b"PING"]);
        assert_eq!(subscriber.read_reply(), Reply::Array(Some(vec![bulk(b"pong"), bulk(b"")])), "{runtime:?}");
        subscriber.send(&[b"SUNSUBSCRIBE"]);
        assert_eq!(subscriber.read_reply(), shard_confirmation(b"sunsubscribe", killed, 0), "{runtime:?}");
        // Every line is closed with the client.
        drop(subscriber);
        assert!(wait_until(Duration::from_secs(5), || {
            cluster.connect(promoted).call(&[b"PUBSUB", b"SHARDNUMSUB", killed])
                == Reply::Array(Some(vec![bulk(killed), Reply::Int(0)]))
        }));
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn scan_walks_every_primary_with_one_cursor_and_survives_a_reshard() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let mut conn = proxy.connect();
        let keys: BTreeSet<String> = (0..3_000).map(|i| format!("walk:{i}")).collect();
        for chunk in keys.iter().collect::<Vec<_>>().chunks(100) {
            let mut mset: Vec<&[u8]> = vec![b"MSET"];
            for key in chunk {
                mset.extend([key.as_bytes(), b"v"]);
            }
            assert_eq!(ask(&mut conn, &mset), status("OK"));
        }
        // One walk with a plain SCAN loop, resharding 500 slots half way: every key is seen, some maybe twice.
        let mut seen = BTreeSet::new();
        let mut cursor = b"0".to_vec();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "{runtime:?}: the walk does not end");
            let reply = ask(&mut conn, &[b"SCAN", &cursor, b"MATCH", b"walk:*", b"COUNT", b"100"]);
            let Reply::Array(Some(parts)) = reply else { panic!("{runtime:?}: SCAN answered {reply:?}") };
            let [Reply::Bulk(Some(next)), Reply::Array(Some(found))] = &parts[..] else { panic!("{parts:?}") };
            for key in found {
                let Reply::Bulk(Some(key)) = key else { panic!("a key: {key:?}") };
                seen.insert(String::from_utf8_lossy(key).into_owned());
            }
            if steps == 10 {
                let primaries = cluster.primaries();
                cluster.reshard(primaries[2], primaries[0], 500);
            }
            if next == b"0" {
                break;
            }
            cursor = next.clone();
        }
        let missed: Vec<&String> = keys.difference(&seen).collect();
        assert!(missed.is_empty(), "{runtime:?}: the walk missed {} keys, e.g. {:?}", missed.len(), missed.first());
        eprintln!("{runtime:?}: SCAN walk of 3,000 keys over a reshard: {steps} steps");
        // redis-cli --scan, unchanged, through the proxy.
        let output = Command::new("redis-cli")
            .args(["-p", &proxy.port.to_string(), "--scan", "--pattern", "walk:*"])
            .output()
            .expect("redis-cli runs");
        let listed: BTreeSet<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect();
        assert_eq!(listed, keys, "{runtime:?}: redis-cli --scan lists every key once");
        // DBSIZE sums over the primaries; CLUSTER SLOTS describes the proxy holding every slot.
        assert_eq!(ask(&mut conn, &[b"DBSIZE"]), Reply::Int(3_000));
        let slots = ask(&mut conn, &[b"CLUSTER", b"SLOTS"]);
        let Reply::Array(Some(ranges)) = &slots else { panic!("{slots:?}") };
        assert_eq!(ranges.len(), 1, "{runtime:?}: one range: {slots:?}");
        let Reply::Array(Some(range)) = &ranges[0] else { panic!("{slots:?}") };
        assert_eq!(&range[..2], &[Reply::Int(0), Reply::Int(16383)]);
        let Reply::Array(Some(node)) = &range[2] else { panic!("{slots:?}") };
        assert_eq!(node[1], Reply::Int(i64::from(proxy.port)), "{runtime:?}: the proxy holds every slot");
    }
}

#[test]
fn ioredis_and_node_redis_plain_clients_work_across_slots() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start();
        let proxy = proxy_for(runtime, &cluster);
        let output: Output = Command::new("node")
            .args(["node/cluster_check.js", &proxy.port.to_string()])
            .current_dir(clients_dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run node (is it installed? .ci/run installs it): {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{runtime:?}: cluster_check.js failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{runtime:?}: {}", stdout.trim());
        assert_no_replicaof(&cluster);
    }
}

/// The password of the protected cluster's nodes.
const CLUSTER_PASSWORD: &str = "cluster-Pass-6b2e";

/// The proxy config members for `cluster` with a single seed, the node on `seed` (its TLS port in a TLS
/// cluster): every other node is learnt from the map, and reached the way `server_auth` and `server_tls` say.
fn one_seed(cluster: &RedisCluster, seed: u16, refresh_period_ms: u64) -> String {
    let port = cluster.tls_port(seed).unwrap_or(seed);
    format!(
        r#""cluster": {{"seeds": [{{"host": "127.0.0.1", "port": {port}}}], "refresh_period": {refresh_period_ms}}}"#
    )
}

/// `/status.json` from the status listener on `port` ("" when it does not answer).
fn status_json(port: u16) -> String {
    http_get(port, "/status.json").map(|(_, body)| body).unwrap_or_default()
}

/// `n` keys on each primary of `cluster`, `{prefix}{shard}:{i}`, by shard in the order of `primaries`.
fn keys_per_shard(cluster: &RedisCluster, primaries: &[u16], prefix: &str, n: usize) -> Vec<Vec<String>> {
    let map = cluster.slot_map();
    primaries
        .iter()
        .enumerate()
        .map(|(shard, primary)| {
            let keys = cluster.keys_where(&format!("{prefix}{shard}"), n, |s| map[s as usize] == *primary);
            keys.into_iter().map(|(key, _)| key).collect()
        })
        .collect()
}

/// Writes `value(key)` to every key through `conn` with SET, then with one MSET across every slot, reads each back
/// with GET and all of them, interleaved by shard, with one MGET (a missing key among them); asserts every
/// value, and that each key holds it on the primary serving its slot (read there directly).
fn write_and_read_across_shards(
    runtime: Runtime,
    cluster: &RedisCluster,
    conn: &mut RespConn,
    shards: &[Vec<String>],
    value: impl Fn(&str) -> String,
) {
    let first = |key: &str| format!("first:{}", value(key));
    for key in shards.iter().flatten() {
        assert_eq!(ask(conn, &[b"SET", key.as_bytes(), first(key).as_bytes()]), status("OK"), "{runtime:?}: SET {key}");
        assert_eq!(ask(conn, &[b"GET", key.as_bytes()]), bulk(first(key).as_bytes()), "{runtime:?}: GET {key}");
    }
    // Interleaved: shard 0's first key, shard 1's first key ... so that the slots of one MGET alternate.
    let interleaved: Vec<&String> = (0..shards[0].len()).flat_map(|i| shards.iter().map(move |s| &s[i])).collect();
    let values: Vec<String> = interleaved.iter().map(|k| value(k)).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for (key, value) in interleaved.iter().zip(&values) {
        mset.extend([key.as_bytes(), value.as_bytes()]);
    }
    assert_eq!(ask(conn, &mset), status("OK"), "{runtime:?}: MSET across every shard");
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(interleaved.iter().map(|k| k.as_bytes()));
    mget.push(b"nobody:wrote:this");
    let mut want: Vec<Reply> = values.iter().map(|v| bulk(v.as_bytes())).collect();
    want.push(Reply::Bulk(None));
    assert_eq!(ask(conn, &mget), Reply::Array(Some(want)), "{runtime:?}: MGET across every shard");
    let map = cluster.slot_map();
    for (key, value) in interleaved.iter().zip(&values) {
        let owner = map[cluster.key_slot(key.as_bytes()) as usize];
        assert_eq!(cluster.connect(owner).call(&[b"GET", key.as_bytes()]), bulk(value.as_bytes()), "{key} on :{owner}");
    }
}

#[test]
fn with_server_auth_a_password_protected_cluster_is_served_and_followed_through_a_sigkill() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let mut cluster = RedisCluster::start_with_password(CLUSTER_PASSWORD);
        let primaries = cluster.primaries();
        // One seed, a replica: the primaries are learnt from its map, and logged in to as the seed is.
        let seed = cluster.replica_of(primaries[2]);
        let auth = format!(r#""server_auth": {{"password": "{CLUSTER_PASSWORD}"}}"#);
        let proxy = Proxy::start_with_fields(runtime, &format!("{}, {auth}", one_seed(&cluster, seed, 5000)));
        let mut conn = RespConn::try_connect(proxy.port, Duration::from_secs(10)).expect("connect to the proxy");
        let shards = keys_per_shard(&cluster, &primaries, "auth", 5);
        write_and_read_across_shards(runtime, &cluster, &mut conn, &shards, |k| format!("{k}:before"));
        let log = proxy.log();
        assert!(!log.contains("refuses the proxy's credentials"), "{runtime:?}: every node took the password:\n{log}");
        // A slot moved behind the proxy's back (its keys migrated with the password): the proxy follows it.
        let moved = &shards[1][0];
        let slot = cluster.key_slot(moved.as_bytes());
        assert_eq!(cluster.reshard_slot(slot, primaries[1], primaries[2]), primaries[2]);
        let want = bulk(format!("{moved}:before").as_bytes());
        assert_eq!(ask(&mut conn, &[b"GET", moved.as_bytes()]), want, "{runtime:?}: a key whose slot moved");

        // SIGKILL of a primary once its replica has its keys (replication is asynchronous): the cluster promotes
        // the replica, and the proxy, logged in to it already, sends the shard's writes there.
        let victim = primaries[0];
        let replica = cluster.replica_of(victim);
        let mut on_replica = cluster.connect(replica);
        assert_eq!(on_replica.call(&[b"READONLY"]), status("OK"));
        for key in &shards[0] {
            let want = bulk(format!("{key}:before").as_bytes());
            assert!(
                wait_until(Duration::from_secs(10), || on_replica.call(&[b"GET", key.as_bytes()]) == want),
                "{runtime:?}: the replica :{replica} has {key}"
            );
        }
        cluster.kill(victim);
        assert_eq!(cluster.wait_for_promotion(victim), replica);
        let started = Instant::now();
        for key in &shards[0] {
            let after = format!("{key}:after");
            assert_eq!(ask(&mut conn, &[b"SET", key.as_bytes(), after.as_bytes()]), status("OK"), "{runtime:?}");
        }
        eprintln!(
            "{runtime:?}: the dead shard's 5 writes answered {} ms after the cluster had promoted :{replica}",
            started.elapsed().as_millis()
        );
        for key in &shards[0] {
            let after = format!("{key}:after");
            assert_eq!(ask(&mut conn, &[b"GET", key.as_bytes()]), bulk(after.as_bytes()), "{runtime:?}: {key}");
            assert_eq!(cluster.connect(replica).call(&[b"GET", key.as_bytes()]), bulk(after.as_bytes()));
        }
        // The other shards kept their values; every shard serves writes and reads across slots.
        let mut mget: Vec<&[u8]> = vec![b"MGET"];
        mget.extend(shards[1..].iter().flatten().map(|k| k.as_bytes()));
        let want = shards[1..].iter().flatten().map(|k| bulk(format!("{k}:before").as_bytes())).collect();
        assert_eq!(ask(&mut conn, &mget), Reply::Array(Some(want)), "{runtime:?}");
        let live: Vec<u16> = vec![replica, primaries[1], primaries[2]];
        write_and_read_across_shards(runtime, &cluster, &mut conn, &keys_per_shard(&cluster, &live, "auth", 5), |k| {
            format!("{k}:again")
        });
        assert_no_replicaof(&cluster);
    }
}

/// The number after `"name":` in `json` (0 when absent).
fn json_count(json: &str, name: &str) -> u64 {
    let Some(at) = json.find(&format!("\"{name}\":")) else { return 0 };
    let digits: String = json[at + name.len() + 3..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[test]
fn with_server_tls_a_tls_cluster_is_served_on_the_tls_ports_it_announces() {
    let _serial = exclusive();
    let certs = Certs::generate("cluster");
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start_tls(&certs);
        let primaries = cluster.primaries();
        let seed = cluster.replica_of(primaries[2]);
        let status_port = free_port();
        // A long refresh period: the slot moved below is learnt from the MOVED the proxy meets.
        let fields = format!(
            r#"{}, "server_tls": {{"ca_file": "{}"}}, "status_listen": "127.0.0.1:{status_port}""#,
            one_seed(&cluster, seed, 60_000),
            certs.path("ca.crt")
        );
        let proxy = Proxy::start_with_fields(runtime, &fields);
        let mut conn = RespConn::try_connect(proxy.port, Duration::from_secs(10)).expect("connect to the proxy");
        let shards = keys_per_shard(&cluster, &primaries, "tls", 5);
        let value = |key: &str| format!("{key}:over-tls");
        write_and_read_across_shards(runtime, &cluster, &mut conn, &shards, value);

        // Asked over TLS, the seed names the TLS ports in CLUSTER NODES: the map the proxy holds and the servers
        // it watches are the nodes on their TLS ports, each shard usable; their plain ports appear nowhere.
        let tls = |port: u16| format!("127.0.0.1:{}", cluster.tls_port(port).expect("a TLS port"));
        let mut wanted: Vec<String> = primaries
            .iter()
            .map(|p| format!(r#""primary":"{}","replicas":["{}"]"#, tls(*p), tls(cluster.replica_of(*p))))
            .collect();
        wanted.extend(cluster.ports().into_iter().map(|p| format!(r#""address":"{}""#, tls(p))));
        wanted.push(r#""served_slots":16384"#.to_string());
        let mut json = String::new();
        let shown = wait_until(Duration::from_secs(10), || {
            json = status_json(status_port);
            wanted.iter().all(|w| json.contains(w.as_str())) && json.matches(r#""usable":true"#).count() == 3
        });
        assert!(shown, "{runtime:?}: /status.json does not show the TLS map {wanted:#?}:\n{json}");
        for port in cluster.ports() {
            assert!(!json.contains(&format!("127.0.0.1:{port}\"")), "{runtime:?}: the plain port {port} in:\n{json}");
        }
        assert!(!proxy.log().contains("TLS with server"), "{runtime:?}: no handshake failed:\n{}", proxy.log());

        // A slot moved behind the proxy's back: the old owner's MOVED names the new owner's TLS port too, and the
        // proxy follows it there.
        let key = &shards[0][0];
        let slot = cluster.key_slot(key.as_bytes());
        assert_eq!(cluster.reshard_slot(slot, primaries[0], primaries[1]), primaries[1]);
        assert_eq!(json_count(&status_json(status_port), "moved"), 0, "{runtime:?}: no MOVED yet");
        assert_eq!(ask(&mut conn, &[b"GET", key.as_bytes()]), bulk(value(key).as_bytes()), "{runtime:?}: moved key");
        assert_eq!(ask(&mut conn, &[b"SET", key.as_bytes(), b"moved"]), status("OK"), "{runtime:?}");
        assert_eq!(cluster.connect(primaries[1]).call(&[b"GET", key.as_bytes()]), bulk(b"moved"));
        let json = status_json(status_port);
        assert!(json_count(&json, "moved") >= 1, "{runtime:?}: the proxy met MOVED:\n{json}");
        assert_no_replicaof(&cluster);
    }
}

#[test]
fn without_server_auth_a_password_protected_cluster_is_refused_with_the_reason() {
    let _serial = exclusive();
    for &runtime in Runtime::ALL {
        let cluster = RedisCluster::start_with_password(CLUSTER_PASSWORD);
        let status_port = free_port();
        let fields =
            format!(r#"{}, "hold_ms": 500, "status_listen": "127.0.0.1:{status_port}""#, cluster.proxy_fields(5000));
        let proxy = Proxy::start_with_fields(runtime, &fields);
        let ports = cluster.ports();
        // The log says, once per node, which node refuses and what to check.
        let refusal = |p: u16| {
            format!(
                "server 127.0.0.1:{p} refuses the proxy's credentials (-NOAUTH Authentication required.): check \
                 server_auth (username and password) against its requirepass or ACL users; nothing is routed to it \
                 until it accepts them"
            )
        };
        assert!(
            wait_until(Duration::from_secs(10), || ports.iter().all(|p| proxy.log().contains(&refusal(*p)))),
            "{runtime:?}: the log does not say that every node refuses the proxy:\n{}",
            proxy.log()
        );
        // A client is answered, after hold_ms, with the reason of each node.
        let mut conn = proxy.connect();
        let reasons: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}: NOAUTH")).collect();
        let refused = Reply::Error(format!(
            "CLUSTERDOWN redis-proxy held the request for 500 ms: no reachable primary serves its slot ({})",
            reasons.join("; ")
        ));
        assert_eq!(ask(&mut conn, &[b"SET", b"k", b"v"]), refused, "{runtime:?}");
        assert_eq!(ask(&mut conn, &[b"GET", b"k"]), refused, "{runtime:?}");
        assert_eq!(ask(&mut conn, &[b"PING"]), status("PONG"), "{runtime:?}: the proxy itself answers");
        // The status page names the reason for every node, and /health why nothing is served.
        let json = status_json(status_port);
        let why = r#""why":"it refuses the proxy's credentials (WRONGPASS or NOAUTH): see server_auth""#;
        assert_eq!(json.matches(why).count(), 6, "{runtime:?}: every node's reason:\n{json}");
        assert!(json.contains(r#""served_slots":0"#), "{runtime:?}: no slot served:\n{json}");
        let health = http_get(status_port, "/health");
        let no_map = format!("cluster: no slot map yet: no node has answered CLUSTER NODES ({})\n", reasons.join("; "));
        assert_eq!(health, Some((503, no_map)), "{runtime:?}");
        let log = proxy.log();
        for port in &ports {
            assert_eq!(log.matches(&refusal(*port)).count(), 1, "{runtime:?}: once per node:\n{log}");
        }
        assert!(!log.contains("is down"), "{runtime:?}: a node refusing the credentials is not down:\n{log}");
        assert_eq!(
            cluster.connect(cluster.owner_of_slot(cluster.key_slot(b"k"))).call(&[b"EXISTS", b"k"]),
            Reply::Int(0)
        );

        // A reload (here one that adds server_auth) keeps every node: in cluster mode the file lists none, and the
        // servers are the map's nodes.
        let config = std::fs::read_to_string(proxy.config_path()).expect("read the proxy config");
        let auth = format!(r#""server_auth": {{"password": "{CLUSTER_PASSWORD}"}}, "hold_ms""#);
        std::fs::write(proxy.config_path(), config.replacen(r#""hold_ms""#, &auth, 1)).expect("rewrite the config");
        proxy.signal("HUP");
        let applied = "reload: applied: server credentials (for new connections, and at once on the 6 server(s) \
                       that turned the old ones down)";
        assert!(
            wait_until(Duration::from_secs(10), || proxy.log().contains(applied)),
            "{runtime:?}: the reload is applied:\n{}",
            proxy.log()
        );
        let log = proxy.log();
        assert!(!log.contains("removing") && !log.contains("refused"), "{runtime:?}: no node removed:\n{log}");
        let json = status_json(status_port);
        assert_eq!(json.matches(r#""address":"127.0.0.1:"#).count(), 6, "{runtime:?}: every node is kept:\n{json}");
        // The nodes that refused the old credentials are asked again with the new ones: the cluster is served.
        let served = wait_until(
            Duration::from_secs(10),
            || matches!(conn.try_call(&[b"SET", b"k", b"v"]), Ok(reply) if reply == status("OK")),
        );
        assert!(served, "{runtime:?}: served after the reload:\n{}", proxy.log());
        assert_eq!(ask(&mut conn, &[b"GET", b"k"]), bulk(b"v"));
        assert_eq!(http_get(status_port, "/health").map(|(code, _)| code), Some(200), "{runtime:?}");
    }
}
