//! Cluster mode through the whole engine, against the modelled cluster of `cluster_world`: the map read from a
//! seed, requests routed by slot, redirections followed and never shown, multi-key commands split by slot and
//! merged, cross-slot refusals, a failover followed, and shard channels moved with their slot.

use super::cluster_world::{to_client, ClusterWorld};
use crate::slot::key_slot;
use crate::testkit::Driver;
use crate::{Action, ConnId};
use bytes::Bytes;

fn request(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// A proxy in front of a 3-primary world that has read the map.
fn started() -> (ClusterWorld, Driver) {
    let mut world = ClusterWorld::new(3);
    let mut kit = Driver::new(ClusterWorld::config(r#", "check_period": 100"#));
    world.settle(&mut kit, 5);
    (world, kit)
}

/// Sends `args` from `client` and lets the world answer; returns what the client got.
fn call(world: &mut ClusterWorld, kit: &mut Driver, client: ConnId, args: &[&str]) -> Bytes {
    kit.feed(client, &request(args));
    let actions = kit.drain();
    let out = world.run(kit, actions);
    to_client(&out, client)
}

#[test]
fn the_map_is_read_from_a_seed_and_every_node_is_learnt() {
    let (world, mut kit) = started();
    let servers = kit.engine.servers();
    assert_eq!(servers.len(), 6, "every node is a server of the proxy: {servers:?}");
    let _ = world;
    let events = kit.events();
    assert!(
        events.iter().any(|e| e.to_string().contains("3 shards serve 16384 of 16384 slots")),
        "the map was accepted: {events:?}"
    );
}

#[test]
fn a_reload_keeps_the_nodes_of_the_map_and_applies_server_auth() {
    let (mut world, mut kit) = started();
    let before = kit.engine.servers();
    assert_eq!(before.len(), 6);
    // The file lists no server in cluster mode: a reload must not remove the nodes learnt from the map.
    let config = ClusterWorld::config(r#", "check_period": 100, "server_auth": {"password": "pw"}"#);
    let changes = kit.engine.reconfigure(kit.clock.now(), config).expect("the reload is taken");
    let applied =
        "server credentials (for new connections, and at once on the 0 server(s) that turned the old ones down)";
    assert_eq!(changes, vec![applied.to_string()]);
    assert_eq!(kit.engine.servers(), before, "every node is still a server");
    let events = kit.events();
    assert!(!events.iter().any(|e| e.to_string().contains("removing")), "no node is removed: {events:?}");
    let client = kit.accept();
    assert_eq!(&call(&mut world, &mut kit, client, &["SET", "k", "v"])[..], b"+OK\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", "k"])[..], b"$1\r\nv\r\n");
}

#[test]
fn keys_go_to_their_slots_primary() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    for i in 0..200 {
        let key = format!("key:{i}");
        assert_eq!(&call(&mut world, &mut kit, client, &["SET", &key, "v"])[..], b"+OK\r\n");
    }
    for i in 0..200 {
        let key = format!("key:{i}");
        let holder = world.holder(key.as_bytes());
        assert!(world.nodes[holder].keys.contains_key(key.as_bytes()), "{key} is on its slot's primary");
        assert_eq!(&call(&mut world, &mut kit, client, &["GET", &key])[..], b"$1\r\nv\r\n");
    }
    let moved: u64 = world.calls.iter().filter(|((n, c), _)| *n >= 3 && c == "SET").map(|(_, n)| n).sum();
    assert_eq!(moved, 0, "no request went to a replica");
}

#[test]
fn multi_key_commands_split_by_slot_and_merge_in_key_order() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    // Tagged keys share slots: one part carries several keys.
    let keys: Vec<String> = (0..20).map(|i| format!("{{t{}}}k{i}", i % 7)).collect();
    let mut mset = vec!["MSET".to_string()];
    for key in &keys {
        mset.push(key.clone());
        mset.push(format!("v-{key}"));
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(&call(&mut world, &mut kit, client, &mset)[..], b"+OK\r\n");
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("missing");
    let mut expected = format!("*{}\r\n", keys.len() + 1).into_bytes();
    for key in &keys {
        let value = format!("v-{key}");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    expected.extend_from_slice(b"$-1\r\n");
    let before: u64 = world.calls.iter().filter(|((_, c), _)| c == "MGET").map(|(_, n)| n).sum();
    assert_eq!(call(&mut world, &mut kit, client, &mget), Bytes::from(expected));
    let after: u64 = world.calls.iter().filter(|((_, c), _)| c == "MGET").map(|(_, n)| n).sum();
    let mut slots: Vec<u16> = mget[1..].iter().map(|k| key_slot(k.as_bytes())).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(after - before, slots.len() as u64, "one MGET per slot, not one per key");
    assert!(slots.len() < mget.len() - 1, "some keys share a slot");
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(&call(&mut world, &mut kit, client, &del)[..], b":20\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["EXISTS", "k1", "k2"])[..], b":0\r\n");
}

#[test]
fn cross_slot_commands_get_redis_clusters_error() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    assert_ne!(key_slot(b"a"), key_slot(b"b"));
    let reply = call(&mut world, &mut kit, client, &["RENAME", "a", "b"]);
    assert_eq!(&reply[..], b"-CROSSSLOT Keys in request don't hash to the same slot\r\n");
    let reply = call(&mut world, &mut kit, client, &["MSETNX", "{t}a", "1", "{t}b", "2"]);
    assert!(!reply.starts_with(b"-CROSSSLOT"), "a shared hash tag is one slot: {reply:?}");
}

#[test]
fn moved_is_followed_and_fixes_the_map() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let key = "somekey";
    let slot = usize::from(key_slot(key.as_bytes()));
    let owner = world.owners[slot];
    let other = (owner + 1) % 3;
    // The slot moves behind the proxy's back, with its key.
    world.owners[slot] = other;
    world.nodes[other].epoch = 10;
    world.nodes[other].keys.insert(key.into(), b"moved".to_vec());
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", key])[..], b"$5\r\nmoved\r\n");
    let gets_on_old = world.calls.get(&(owner, "GET".to_string())).copied().unwrap_or(0);
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", key])[..], b"$5\r\nmoved\r\n");
    assert_eq!(world.calls.get(&(owner, "GET".to_string())).copied().unwrap_or(0), gets_on_old, "the map was fixed");
}

#[test]
fn ask_is_followed_without_changing_the_map() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let (moved_key, staying_key) = ("{m}moved", "{m}staying");
    let slot = key_slot(b"m");
    let from = world.owners[usize::from(slot)];
    let to = (from + 1) % 3;
    world.nodes[from].keys.insert(staying_key.into(), b"here".to_vec());
    world.nodes[to].keys.insert(moved_key.into(), b"there".to_vec());
    world.migration = Some(super::cluster_world::Migration { slot, from, to });
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", moved_key])[..], b"$5\r\nthere\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", staying_key])[..], b"$4\r\nhere\r\n");
    assert_eq!(world.calls.get(&(to, "ASKING".to_string())), Some(&1));
    // An MGET of both meets TRYAGAIN (Redis gives it until the migration ends): it is split key by key, and
    // each key is found where it is.
    let reply = call(&mut world, &mut kit, client, &["MGET", moved_key, staying_key, moved_key]);
    assert_eq!(&reply[..], b"*3\r\n$5\r\nthere\r\n$4\r\nhere\r\n$5\r\nthere\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["EXISTS", moved_key, staying_key, "{m}none"])[..], b":2\r\n");
    // The slot's owner did not change: the map still sends the slot to the source.
    let gets_on_source = world.calls.get(&(from, "GET".to_string())).copied();
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", staying_key])[..], b"$4\r\nhere\r\n");
    assert_eq!(world.calls.get(&(from, "GET".to_string())).copied(), gets_on_source.map(|n| n + 1));
}

#[test]
fn a_failover_is_followed_and_held_requests_go_to_the_new_primary() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let key = "foo";
    assert_eq!(&call(&mut world, &mut kit, client, &["SET", key, "1"])[..], b"+OK\r\n");
    let owner = world.owners[usize::from(key_slot(key.as_bytes()))];
    world.fail_over(&mut kit, owner);
    world.settle(&mut kit, 10);
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", key])[..], b"$1\r\n1\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["INCR", key])[..], b":2\r\n");
}

#[test]
fn proxy_failover_asks_the_replica_and_answers_once_the_map_shows_it_as_primary() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    assert_eq!(&call(&mut world, &mut kit, client, &["SET", "foo", "1"])[..], b"+OK\r\n");
    let owner = world.owners[usize::from(key_slot(b"foo"))];
    let replica = world.nodes.iter().position(|n| n.replica_of == Some(owner)).expect("a replica");
    let admin = kit.engine.accept_admin(kit.clock.now(), "127.0.0.1:40000".parse().expect("an address"));
    let target = format!("127.0.0.1:{}", world.nodes[replica].port);
    let refused = call(&mut world, &mut kit, admin, &["PROXY", "FAILOVER"]);
    assert_eq!(&refused[..], &b"-ERR in cluster mode name the replica to promote: PROXY FAILOVER host:port\r\n"[..]);
    let primary = format!("127.0.0.1:{}", world.nodes[owner].port);
    let refused = call(&mut world, &mut kit, admin, &["PROXY", "FAILOVER", &primary]);
    assert_eq!(refused, Bytes::from(format!("-ERR cannot fail over: {primary} is a primary already\r\n")));
    let mut answer = call(&mut world, &mut kit, admin, &["PROXY", "FAILOVER", &target]);
    for _ in 0..20 {
        if !answer.is_empty() {
            break;
        }
        kit.advance(std::time::Duration::from_millis(100));
        let actions = kit.drain();
        answer = to_client(&world.run(&mut kit, actions), admin);
    }
    assert_eq!(world.owners[usize::from(key_slot(b"foo"))], replica, "the cluster moved the slots");
    let slots = world.owners.iter().filter(|o| **o == replica).count();
    assert_eq!(answer, Bytes::from(format!("+OK done: {target} is the primary of {slots} slots now\r\n")));
    assert_eq!(&call(&mut world, &mut kit, client, &["INCR", "foo"])[..], b":2\r\n");
    assert_eq!(world.calls.get(&(replica, "INCR".to_string())).copied(), Some(1), "the write went to the new primary");
}

#[test]
fn a_subscriber_whose_node_crashes_is_subscribed_again_elsewhere_without_a_second_confirmation() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let confirmed = call(&mut world, &mut kit, client, &["SUBSCRIBE", "a", "b"]);
    assert_eq!(&confirmed[..], b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
    let holder = (0..world.nodes.len())
        .find(|n| world.calls.contains_key(&(*n, "SUBSCRIBE".to_string())))
        .expect("a node took the subscription");
    let out = world.crash(&mut kit, holder);
    let again: Vec<usize> = (0..world.nodes.len())
        .filter(|n| *n != holder && world.calls.contains_key(&(*n, "SUBSCRIBE".to_string())))
        .collect();
    assert_eq!(again.len(), 1, "subscribed again on one other node");
    assert!(world.nodes[again[0]].replica_of.is_none(), "on a primary");
    assert!(to_client(&out, client).is_empty(), "the client does not see the second confirmations");
    assert!(!out.iter().any(|a| matches!(a, crate::Action::Close { conn } if *conn == client)), "nor is closed");
    let events = kit.events();
    assert!(events.iter().any(|e| e.to_string().contains("its 2 channels and patterns are followed on")), "{events:?}");
}

/// The first of `prefix0`, `prefix1` ... whose slot `wanted` takes.
fn channel_where(prefix: &str, wanted: impl Fn(u16) -> bool) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|c| wanted(key_slot(c.as_bytes()))).expect("a channel")
}

fn shard_push(kind: &str, channel: &str, last: &str) -> String {
    let last = if last.starts_with(':') { format!("{last}\r\n") } else { format!("${}\r\n{last}\r\n", last.len()) };
    format!("*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n{last}", kind.len(), channel.len())
}

#[test]
fn shard_channels_follow_their_slot_through_a_stale_map_a_moved_slot_and_a_crash_unseen_by_the_client() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let owner_of = |world: &ClusterWorld, channel: &str| world.owners[usize::from(key_slot(channel.as_bytes()))];
    let first = channel_where("orders", |_| true);
    let home = owner_of(&world, &first);
    let second = channel_where("prices", |s| world.owners[usize::from(s)] != home);
    // A third channel whose slot moved behind the proxy's back: the node it asks answers MOVED.
    let third = channel_where("trades", |s| world.owners[usize::from(s)] == home && s != key_slot(first.as_bytes()));
    let third_slot = key_slot(third.as_bytes());
    let elsewhere = (0..3).find(|n| *n != home && *n != owner_of(&world, &second)).expect("a third primary");

    let got = call(&mut world, &mut kit, client, &["SSUBSCRIBE", &first]);
    assert_eq!(got, Bytes::from(shard_push("ssubscribe", &first, ":1")));
    // Each node counts its own connection's channels; the client is told its count over both.
    let got = call(&mut world, &mut kit, client, &["SSUBSCRIBE", &second]);
    assert_eq!(got, Bytes::from(shard_push("ssubscribe", &second, ":2")));
    world.owners[usize::from(third_slot)] = elsewhere;
    world.bump_epoch(elsewhere);
    let got = call(&mut world, &mut kit, client, &["SSUBSCRIBE", &third]);
    assert_eq!(got, Bytes::from(shard_push("ssubscribe", &third, ":3")), "MOVED was followed, unseen");
    assert_eq!(world.calls.get(&(elsewhere, "SSUBSCRIBE".to_string())), Some(&1));
    let out = world.spublish(&mut kit, second.as_bytes(), b"hello");
    assert_eq!(to_client(&out, client), Bytes::from(shard_push("smessage", &second, "hello")));

    // The first channel's slot moves: the old owner's `sunsubscribe` is swallowed, and the next map puts the
    // channel on the new owner, whose confirmation is swallowed too.
    let out = world.move_slot(&mut kit, key_slot(first.as_bytes()), elsewhere);
    assert!(to_client(&out, client).is_empty(), "{:?}", to_client(&out, client));
    let out = world.settle(&mut kit, 5);
    assert!(to_client(&out, client).is_empty(), "{:?}", to_client(&out, client));
    assert_eq!(world.calls.get(&(elsewhere, "SSUBSCRIBE".to_string())), Some(&2), "subscribed again there");
    let out = world.spublish(&mut kit, first.as_bytes(), b"moved");
    assert_eq!(to_client(&out, client), Bytes::from(shard_push("smessage", &first, "moved")));

    // The second channel's node crashes and the cluster promotes its replica: followed there.
    let crashed = owner_of(&world, &second);
    world.fail_over(&mut kit, crashed);
    let out = world.settle(&mut kit, 10);
    assert!(to_client(&out, client).is_empty(), "{:?}", to_client(&out, client));
    let promoted = owner_of(&world, &second);
    assert_ne!(promoted, crashed);
    assert_eq!(world.calls.get(&(promoted, "SSUBSCRIBE".to_string())), Some(&1));
    let out = world.spublish(&mut kit, second.as_bytes(), b"promoted");
    assert_eq!(to_client(&out, client), Bytes::from(shard_push("smessage", &second, "promoted")));
    let events: Vec<String> = kit.events().iter().map(ToString::to_string).collect();
    assert_eq!(events.iter().filter(|e| e.contains("shard channel(s) lost their node or slot")).count(), 2);

    // Leaving is answered at once with the client's count; the proxy leaves the channel on its node too.
    let got = call(&mut world, &mut kit, client, &["SUNSUBSCRIBE", &first, "never"]);
    let expected = shard_push("sunsubscribe", &first, ":2") + &shard_push("sunsubscribe", "never", ":2");
    assert_eq!(got, Bytes::from(expected));
    assert_eq!(world.calls.get(&(elsewhere, "SUNSUBSCRIBE".to_string())), Some(&1));
    assert!(to_client(&world.spublish(&mut kit, first.as_bytes(), b"gone"), client).is_empty());
    let got = call(&mut world, &mut kit, client, &["SUNSUBSCRIBE"]);
    // All of them, in the channels' order, each with the count left after it.
    let (low, high) = if second < third { (&second, &third) } else { (&third, &second) };
    let expected = shard_push("sunsubscribe", low, ":1") + &shard_push("sunsubscribe", high, ":0");
    assert_eq!(got, Bytes::from(expected));
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[test]
fn a_shard_subscription_lost_before_its_confirmation_waits_for_a_primary_no_longer_than_hold_ms() {
    let mut world = ClusterWorld::new(3);
    let mut kit = Driver::new(ClusterWorld::config(r#", "check_period": 100, "hold_ms": 1000"#));
    world.settle(&mut kit, 5);
    let client = kit.accept();
    let channel = channel_where("orders", |_| true);
    let owner = world.owners[usize::from(key_slot(channel.as_bytes()))];
    // The SSUBSCRIBE is on its way when its node dies, and the cluster promotes nobody.
    world.latency = std::time::Duration::from_millis(5);
    kit.feed(client, &request(&["SSUBSCRIBE", &channel]));
    let actions = kit.drain();
    let mut got = to_client(&world.run(&mut kit, actions), client).to_vec();
    got.extend_from_slice(&to_client(&world.crash(&mut kit, owner), client));
    kit.feed(client, &request(&["PING"]));
    let actions = kit.drain();
    got.extend_from_slice(&to_client(&world.run(&mut kit, actions), client));
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    for _ in 0..15 {
        got.extend_from_slice(&to_client(&world.settle(&mut kit, 1), client));
    }
    let refused = "-CLUSTERDOWN redis-proxy could not subscribe within 1000 ms: no reachable primary serves the \
                   channels' slot\r\n";
    // The PING held behind it is answered after it, as a subscribed RESP2 connection answers it.
    let expected = [refused, "*2\r\n$4\r\npong\r\n$0\r\n\r\n"].concat();
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[test]
fn a_command_refused_inside_multi_aborts_the_transaction_at_exec() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    assert_eq!(&call(&mut world, &mut kit, client, &["MULTI"])[..], b"+OK\r\n");
    let refused = call(&mut world, &mut kit, client, &["SUBSCRIBE", "ch"]);
    assert!(refused.starts_with(b"-ERR redis-proxy does not support the SUBSCRIBE family inside MULTI"), "{refused:?}");
    assert_eq!(&call(&mut world, &mut kit, client, &["SET", "foo", "1"])[..], b"+QUEUED\r\n");
    let exec = call(&mut world, &mut kit, client, &["EXEC"]);
    assert_eq!(&exec[..], b"-EXECABORT Transaction discarded because of previous errors.\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["GET", "foo"])[..], b"$-1\r\n", "the SET never ran");
    assert!((0..world.nodes.len()).all(|n| !world.calls.contains_key(&(n, "SUBSCRIBE".to_string()))));
    // The transaction is over for the proxy too: what it answers outside MULTI, it answers again.
    assert_eq!(&call(&mut world, &mut kit, client, &["CLIENT", "SETNAME", "app"])[..], b"+OK\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["CLIENT", "GETNAME"])[..], b"$3\r\napp\r\n");
    let waited = call(&mut world, &mut kit, client, &["WAIT", "0", "0"]);
    assert!(waited.starts_with(b":"), "WAIT is answered by the proxy: {waited:?}");
    // DISCARD ends one as EXEC does.
    assert_eq!(&call(&mut world, &mut kit, client, &["MULTI"])[..], b"+OK\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["DISCARD"])[..], b"+OK\r\n");
    assert_eq!(&call(&mut world, &mut kit, client, &["CLIENT", "GETNAME"])[..], b"$3\r\napp\r\n");
}

/// Keys that hash to `primary`'s slots.
fn keys_on(world: &ClusterWorld, primary: usize, count: usize) -> Vec<String> {
    (0..).map(|i| format!("key:{i}")).filter(|k| world.holder(k.as_bytes()) == primary).take(count).collect()
}

/// Takes the requests in `actions` that go to `node`.
fn sends_to(world: &ClusterWorld, actions: &mut Vec<Action>, node: usize) -> Vec<Action> {
    let (mine, rest) = std::mem::take(actions)
        .into_iter()
        .partition(|a| matches!(a, Action::Send { conn, .. } if world.node_of(*conn) == Some(node)));
    *actions = rest;
    mine
}

/// Sends `pipeline` from `client` in one read, then lets the nodes answer one connection at a time, in the order
/// of `nodes`; returns what the client got after each node's answer. The client's connections to those nodes
/// must be open already.
fn answered_node_by_node(
    world: &mut ClusterWorld,
    kit: &mut Driver,
    client: ConnId,
    pipeline: &[Vec<u8>],
    nodes: &[usize],
) -> Vec<Bytes> {
    kit.feed(client, &pipeline.concat());
    let mut sends = kit.drain();
    let mut got = Vec::new();
    for node in nodes {
        let mine = sends_to(world, &mut sends, *node);
        got.push(to_client(&world.run(kit, mine), client));
    }
    assert!(sends.iter().all(|a| !matches!(a, Action::Send { .. })), "every request went to one of {nodes:?}");
    got
}

#[test]
fn a_reads_replies_from_several_primaries_go_out_together_once_the_last_is_in() {
    let (mut world, mut kit) = started();
    let client = kit.accept();
    let keys: Vec<Vec<String>> = (0..3).map(|p| keys_on(&world, p, 4)).collect();
    for on_primary in &keys {
        assert_eq!(&call(&mut world, &mut kit, client, &["SET", &on_primary[0], "v"])[..], b"+OK\r\n");
    }
    // Interleaved over the primaries, as random keys are.
    let pipeline: Vec<Vec<u8>> = (0..12).map(|i| request(&["SET", &keys[i % 3][i / 3], "v"])).collect();
    let got = answered_node_by_node(&mut world, &mut kit, client, &pipeline, &[2, 0, 1]);
    assert_eq!(got[..2], [Bytes::new(), Bytes::new()], "nothing goes out before the read's last reply is in");
    assert_eq!(&got[2][..], "+OK\r\n".repeat(12).as_bytes());
    // Two reads: the first's replies go out once they are all in, though the second's are not.
    kit.feed(client, &[request(&["GET", &keys[0][0]]), request(&["GET", &keys[1][0]])].concat());
    let mut first = kit.drain();
    kit.feed(client, &request(&["GET", &keys[2][0]]));
    let second = kit.drain();
    let on_node_0 = sends_to(&world, &mut first, 0);
    assert!(to_client(&world.run(&mut kit, on_node_0), client).is_empty(), "the first read's second reply is awaited");
    let on_node_1 = sends_to(&world, &mut first, 1);
    assert_eq!(&to_client(&world.run(&mut kit, on_node_1), client)[..], "$1\r\nv\r\n".repeat(2).as_bytes());
    assert_eq!(&to_client(&world.run(&mut kit, second), client)[..], b"$1\r\nv\r\n");
}

#[test]
fn replies_in_go_out_at_once_when_a_request_of_their_read_waits_to_be_sent_again() {
    for down_first in [true, false] {
        let (mut world, mut kit) = started();
        let client = kit.accept();
        let (up, down) = (keys_on(&world, 0, 1).remove(0), keys_on(&world, 1, 1).remove(0));
        assert_eq!(&call(&mut world, &mut kit, client, &["SET", &up, "u"])[..], b"+OK\r\n");
        assert_eq!(&call(&mut world, &mut kit, client, &["SET", &down, "d"])[..], b"+OK\r\n");
        // Node 1 answers CLUSTERDOWN (cut off in a minority): its request is sent again later, and may wait long.
        world.nodes[1].minority = Some(world.nodes_text());
        let pipeline = [request(&["GET", &up]), request(&["GET", &down]), request(&["GET", &up])];
        let order = if down_first { [1, 0] } else { [0, 1] };
        let got = answered_node_by_node(&mut world, &mut kit, client, &pipeline, &order);
        assert_eq!(
            &got.concat()[..],
            b"$1\r\nu\r\n",
            "the reply before the waiting one is out (down first: {down_first})"
        );
        world.nodes[1].minority = None;
        let out = world.settle(&mut kit, 3);
        assert_eq!(&to_client(&out, client)[..], b"$1\r\nd\r\n$1\r\nu\r\n", "the rest follows once node 1 answers");
    }
}

/// Found with the real cluster: four clients retrying a watched transaction (`WATCH`, `GET`, then `MULTI`, `SET`,
/// `EXEC` in one write, again after a null `EXEC`, as `redis::transaction` does) while the proxy's map is stale
/// for their slot. The first `WATCH` of each meets `MOVED` (its transaction is doomed: `EXEC` answers null), and
/// the private connection it was sent on led to the old owner. Every retry went there again, forever: the
/// doomed `EXEC` was answered by the proxy itself, so the connection was never handed back. Each client's
/// second try must run.
#[test]
fn watched_transactions_retried_against_a_stale_map_run_on_the_second_try() {
    let (mut world, mut kit) = started();
    let key = "{w}counter";
    let slot = usize::from(key_slot(key.as_bytes()));
    let owner = world.owners[slot];
    let other = (owner + 1) % 3;
    world.owners[slot] = other;
    world.nodes[other].epoch = 10;
    let clients: Vec<ConnId> = (0..4).map(|_| kit.accept()).collect();
    let mut pipe = request(&["MULTI"]);
    pipe.extend(request(&["SET", key, "v"]));
    pipe.extend(request(&["EXEC"]));
    for round in 0..6 {
        if round == 3 {
            // The slot moves on while the clients retry.
            world.owners[slot] = owner;
            world.nodes[owner].epoch = 20;
        }
        let mut got: std::collections::BTreeMap<ConnId, Vec<u8>> = Default::default();
        for step in 0..3 {
            for &client in &clients {
                match step {
                    0 => kit.feed(client, &request(&["WATCH", key])),
                    1 => kit.feed(client, &request(&["GET", key])),
                    _ => kit.feed(client, &pipe),
                }
            }
            let actions = kit.drain();
            let mut out = world.run(&mut kit, actions);
            out.extend(world.settle(&mut kit, 1));
            for &client in &clients {
                got.entry(client).or_default().extend_from_slice(&to_client(&out, client));
            }
        }
        for &client in &clients {
            let replies = String::from_utf8_lossy(&got[&client]).into_owned();
            assert!(
                replies.starts_with("+OK\r\n$") && replies.contains("+QUEUED\r\n"),
                "{round}, {client}: {replies:?}"
            );
            // The first try of each round after the slot moved is doomed (null); every other one runs.
            let doomed = round == 0 || round == 3;
            assert_eq!(replies.ends_with("*-1\r\n"), doomed, "round {round}, client {client}: {replies:?}");
        }
    }
}

/// With workers: the deciding engine reads the map and a worker routes by the map it publishes, reading none
/// itself. A `MOVED` the worker meets is followed at once and passed on as a wish for a fresh map; once the
/// decider has read and published it, the worker's requests go straight to the new owner.
#[test]
fn a_worker_routes_by_its_deciders_map_and_passes_its_wish_for_a_refresh_on() {
    let config = ClusterWorld::config(r#", "check_period": 100, "workers": 2"#);
    let clock = crate::testkit::FakeClock::new();
    let engine = crate::Engine::new_decider(config.clone(), clock.now()).expect("a deciding engine");
    let mut decider = Driver::with_engine(engine, config.clone(), clock);
    let mut world = ClusterWorld::new(3);
    world.settle(&mut decider, 5);
    let newest = |decider: &mut Driver| std::iter::from_fn(|| decider.engine.poll_topology()).last();
    let published = newest(&mut decider).expect("the map is published");
    // The worker's connections reach the same cluster, modelled apart (each engine numbers its own connections).
    let mut seen = ClusterWorld::new(3);
    let share = config.worker_share();
    let engine = crate::Engine::new_worker(share.clone(), decider.clock.now(), &published).expect("a worker");
    let mut worker = Driver::with_engine(engine, share, decider.clock);
    let client = worker.accept();
    let key = "somekey";
    let slot = usize::from(key_slot(key.as_bytes()));
    let owner = seen.owners[slot];
    assert_eq!(&call(&mut seen, &mut worker, client, &["SET", key, "v"])[..], b"+OK\r\n");
    assert!(seen.nodes[owner].keys.contains_key(key.as_bytes()), "routed by the published map at once");
    assert!(!worker.engine.cluster_refresh_wanted());

    // The slot moves; the worker meets MOVED, follows it, and wants a fresh map.
    let other = (owner + 1) % 3;
    for cluster in [&mut world, &mut seen] {
        cluster.owners[slot] = other;
        cluster.nodes[other].epoch = 10;
        cluster.nodes[other].keys.insert(key.into(), b"moved".to_vec());
    }
    assert_eq!(&call(&mut seen, &mut worker, client, &["GET", key])[..], b"$5\r\nmoved\r\n");
    assert!(worker.engine.cluster_refresh_wanted(), "the MOVED is passed on");
    assert!(!worker.engine.cluster_refresh_wanted(), "once");
    let now = decider.clock.now();
    decider.engine.worker_status(0, worker.engine.status(now));
    let counts = decider.engine.status(now).cluster.expect("cluster status").counts;
    assert_eq!((counts.moved, counts.refreshes), (1, 1), "the worker's MOVED in the decider's status, its refresh");
    let maps_read =
        |cluster: &ClusterWorld| (0..6).filter_map(|n| cluster.calls.get(&(n, "CLUSTER".into()))).sum::<u64>();
    assert_eq!(maps_read(&seen), 0, "a worker never reads the map itself");

    // Another slot moves too, unseen by the worker so far.
    let (key2, slot2) = ("otherkey", usize::from(key_slot(b"otherkey")));
    let (owner2, other2) = (seen.owners[slot2], (seen.owners[slot2] + 2) % 3);
    for cluster in [&mut world, &mut seen] {
        cluster.owners[slot2] = other2;
        cluster.nodes[other2].epoch = 11;
        cluster.nodes[other2].keys.insert(key2.into(), b"also".to_vec());
    }

    // The decider reads a map at the worker's wish and publishes it: the worker adopts it.
    let before = maps_read(&world);
    decider.engine.refresh_cluster_map(decider.clock.now());
    world.settle(&mut decider, 3);
    assert!(maps_read(&world) > before, "the decider read the map");
    let published = newest(&mut decider).expect("the new map is published");
    worker.catch_up(decider.clock.now()).engine.follow(decider.clock.now(), &published);
    let gets_on_old = seen.calls.get(&(owner, "GET".to_string())).copied().unwrap_or(0);
    assert_eq!(&call(&mut seen, &mut worker, client, &["GET", key])[..], b"$5\r\nmoved\r\n");
    assert_eq!(seen.calls.get(&(owner, "GET".to_string())).copied().unwrap_or(0), gets_on_old, "no redirection");
    assert_eq!(&call(&mut seen, &mut worker, client, &["GET", key2])[..], b"$4\r\nalso\r\n");
    assert_eq!(seen.calls.get(&(owner2, "GET".to_string())), None, "straight to the new owner, by the new map");
    assert_eq!(maps_read(&seen), 0);
}
