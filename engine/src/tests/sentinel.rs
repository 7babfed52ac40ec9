//! Sentinel mode through the whole engine, in the [`World`] of fake sentinels and fake servers: the tests assert
//! where writes and reads land. The majority rule, `ROLE`/`INFO` confirmation, a lying or stale sentinel, a proxy
//! cut off from the majority, and two proxies of which one is cut off while Sentinel fails over. The randomized
//! schedules are in `sentinel_sim`.

use super::sentinel_world::{Cut, World, MAJORITY_LOST_AFTER_MS, STEP_MS};
use crate::testkit::FakeServer;
use crate::{Config, Event};
use std::time::Duration;

const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";

#[test]
fn follows_the_master_a_majority_names_and_never_sends_replicaof() {
    let mut world = World::new(1, 3, "");
    world.run(Duration::from_millis(100));
    assert_eq!(world.master_port(0), Some(7000));
    // Two clients use both shared slots of a server that was learnt from the sentinels (none is configured).
    let client = world.client(0);
    let other = world.client(0);
    world.send(client, SET);
    world.send(other, SET);
    assert_eq!(world.take("SET"), [7000, 7000]);

    // Sentinel fails over: the master dies, 7001 is promoted, 7002 follows it.
    world.kill(7000);
    world.send(client, SET);
    world.run(Duration::from_millis(500));
    assert_eq!(world.take("SET"), Vec::<u16>::new(), "held while no master is confirmed");
    world.set_role(7001, None);
    world.set_role(7002, Some(7001));
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.publish(26000, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7001");
    world.run(Duration::from_millis(300));
    assert_ne!(world.master_port(0), Some(7001), "one sentinel is no majority");
    assert!(world.take("SET").is_empty());

    world.sentinels.get_mut(&26001).unwrap().master = Some(7001);
    world.run(Duration::from_millis(300));
    assert_eq!(world.master_port(0), Some(7001));
    assert_eq!(world.take("SET"), [7001], "the held write went to the new master");
    assert!(world.take("REPLICAOF").is_empty());
    assert!(!world.proxies[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::ReplicaOfSent { .. } | Event::PromotionStarted { .. })));

    // The old master returns as a master (its own config); Sentinel has not re-pointed it yet: never routed.
    world.down.clear();
    world.run(Duration::from_millis(3000));
    assert_eq!(world.master_port(0), Some(7001));
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn a_named_master_is_routed_only_once_its_own_info_says_master() {
    let mut world = World::new(1, 3, "");
    world.run(Duration::from_millis(100));
    assert_eq!(world.master_port(0), Some(7000));
    // Every sentinel names 7001, which still reports role:slave (stale or lying sentinels, or a promotion not
    // finished): writes are held, 7001 is asked again and again.
    for sentinel in world.sentinels.values_mut() {
        sentinel.master = Some(7001);
    }
    let client = world.client(0);
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(0), None, "the old master is dropped, the new one not confirmed");
    world.send(client, SET);
    world.run(Duration::from_millis(500));
    assert!(world.take("SET").is_empty(), "a server that is not master yet is never routed to");
    world.set_role(7001, None);
    world.run(Duration::from_millis(300));
    assert_eq!(world.master_port(0), Some(7001));
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn the_majority_wins_over_a_lying_or_stale_sentinel() {
    let mut world = World::new(1, 3, "");
    // Sentinel 26002 names a server that is a master too (another setup, or an old configuration).
    world.servers.insert(7009, FakeServer::master(7009));
    world.sentinels.get_mut(&26002).unwrap().master = Some(7009);
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(0), Some(7000));
    let client = world.client(0);
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7000]);
    // It shouts about a switch: a prompt to ask again, not the truth.
    world.publish(26002, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7009");
    world.run(Duration::from_millis(1000));
    assert_eq!(world.master_port(0), Some(7000));
    // After a real failover, a stale sentinel still naming the old master is outvoted.
    world.kill(7000);
    world.set_role(7001, None);
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.sentinels.get_mut(&26001).unwrap().master = Some(7001);
    world.sentinels.get_mut(&26002).unwrap().master = Some(7000);
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(0), Some(7001));
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn without_a_majority_the_master_is_kept_then_dropped_after_the_bound() {
    let mut world = World::new(1, 3, "");
    world.run(Duration::from_millis(100));
    let client = world.client(0);
    world.stop_sentinel(26001);
    world.stop_sentinel(26002);
    world.run(Duration::from_millis(100));
    assert!(world.proxies[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::SentinelNoMajority { keeping: Some(m), .. } if m.port == 7000)));
    // A lone sentinel's switch is not followed.
    world.set_role(7001, None);
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.publish(26000, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7001");
    world.run(Duration::from_millis(2000));
    assert_eq!(world.master_port(0), Some(7000), "the current master is kept");
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7000], "service goes on");
    // Past majority_lost_after (3 s here) since the majority was last heard: no more writes.
    world.run(Duration::from_millis(1000));
    assert_eq!(world.master_port(0), None);
    world.send(client, SET);
    world.run(Duration::from_millis(100));
    assert!(world.take("SET").is_empty());
    // The majority returns and names 7001: the held write goes there.
    for sentinel in world.sentinels.values_mut() {
        sentinel.up = true;
        sentinel.master = Some(7001);
    }
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(0), Some(7001));
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn reads_go_only_to_replicas_the_sentinels_list_as_healthy() {
    let mut world = World::new(1, 3, ", \"mode\": \"readsToSlaves\", \"read_your_writes\": false");
    for sentinel in world.sentinels.values_mut() {
        sentinel.replicas = vec![(7001, "slave", "ok"), (7002, "s_down,slave", "ok")];
    }
    world.run(Duration::from_millis(1500));
    let client = world.client(0);
    for _ in 0..6 {
        world.send(client, GET);
    }
    assert_eq!(world.take("GET"), [7001; 6]);
    for sentinel in world.sentinels.values_mut() {
        sentinel.replicas = vec![(7001, "slave", "err"), (7002, "slave", "ok")];
    }
    world.run(Duration::from_millis(1500));
    for _ in 0..4 {
        world.send(client, GET);
    }
    assert_eq!(world.take("GET"), [7002; 4]);
}

#[test]
fn configuration_of_sentinel_mode() {
    let config =
        Config::from_json(r#"{"sentinel": {"sentinels": [{"port": 26379}], "master_name": "m", "password": "p"}}"#)
            .unwrap();
    let sentinel = config.sentinel.unwrap();
    assert!(config.servers.is_empty());
    assert_eq!(sentinel.majority_lost_after, Duration::from_millis(5000));
    let credentials = sentinel.credentials.as_ref().expect("credentials");
    assert_eq!(credentials.password, crate::config::PasswordSource::Plain(crate::config::Secret::new("p")));
    let err = |text: &str| Config::from_json(text).unwrap_err().0;
    assert!(err(r#"{"sentinel": {"sentinels": [], "master_name": "m"}}"#).contains("`sentinel.sentinels`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}]}}"#).contains("`sentinel.master_name`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}], "master_name": "m", "x": 1}}"#).contains("`x`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}], "master_name": "m", "majority_lost_after": "1"}}"#)
        .contains("`sentinel.majority_lost_after`"));
    assert!(err(r#"{}"#).contains("missing field `servers`"));
}

/// The issue's case with two proxies: proxy 1 is cut (silently, as by a partition) from two of the three sentinels
/// when Sentinel fails over to 7001 and leaves 7000 running as a master. Proxy 0 follows within a round; proxy 1
/// keeps 7000 for `majority_lost_after` at most, then writes nowhere; after the heal both write to 7001.
#[test]
fn a_proxy_cut_off_from_the_majority_stops_writing_to_the_old_master_after_the_bound() {
    let mut world = World::new(2, 3, ", \"check_period\": 200");
    world.run(Duration::from_millis(300));
    assert_eq!((world.master_port(0), world.master_port(1)), (Some(7000), Some(7000)));
    let (a, b) = (world.client(0), world.client(1));
    world.cut(1, 26000, Cut::Silent);
    world.cut(1, 26001, Cut::Silent);
    let cut_at = world.clock.ms();
    world.set_role(7001, None);
    world.set_role(7002, Some(7001));
    for sentinel in world.sentinels.values_mut() {
        sentinel.master = Some(7001);
    }
    // One check period (the next round) and a step later, proxy 0 has left 7000.
    world.run(Duration::from_millis(200 + STEP_MS));
    assert_eq!(world.master_port(0), Some(7001));
    world.send(a, SET);
    world.send(b, SET);
    assert_eq!(world.take("SET"), [7001, 7000], "proxy 1 keeps its master within the bound: the window of two");
    // Proxy 1 last heard the majority before the cut: past majority_lost_after from then, it writes nowhere.
    world.run(Duration::from_millis(cut_at + MAJORITY_LOST_AFTER_MS + STEP_MS - world.clock.ms()));
    assert_eq!(world.master_port(1), None);
    world.send(a, SET);
    world.send(b, SET);
    assert_eq!(world.take("SET"), [7001]);
    // Healed, proxy 1 drops its quiet connections, hears the majority and confirms 7001.
    world.heal(1, 26000);
    world.heal(1, 26001);
    world.run(Duration::from_millis(1000));
    assert_eq!(world.master_port(1), Some(7001));
    world.send(a, SET);
    world.send(b, SET);
    let held_and_new = world.take("SET");
    assert!(held_and_new.iter().all(|port| *port == 7001), "{held_and_new:?}");
}

/// With worker engines: the deciding engine follows the sentinels and its workers follow it. No worker asks a
/// sentinel anything (the world asserts it), reads stay off the replica the sentinels do not list as healthy on
/// every worker, and a Sentinel failover moves every worker's writes to the new master without a `REPLICAOF`.
#[test]
fn workers_follow_the_sentinels_through_their_decider() {
    let mut world = World::with_workers(3, 2, ", \"mode\": \"readsToSlaves\", \"read_your_writes\": false");
    for sentinel in world.sentinels.values_mut() {
        sentinel.replicas = vec![(7001, "slave", "ok"), (7002, "s_down,slave", "ok")];
    }
    world.run(Duration::from_millis(1500));
    assert_eq!([world.master_port(0), world.master_port(1), world.master_port(2)], [Some(7000); 3]);
    let clients = [world.client(1), world.client(2)];
    for client in clients {
        world.send(client, SET);
        for _ in 0..3 {
            world.send(client, GET);
        }
    }
    assert_eq!(world.landings.iter().map(|l| l.proxy).collect::<Vec<_>>(), [1, 1, 1, 1, 2, 2, 2, 2]);
    assert_eq!(world.take("SET"), [7000, 7000]);
    assert_eq!(world.take("GET"), [7001; 6], "the workers read only from the replica the sentinels list");

    // Sentinel fails over: 7000 dies, 7001 is promoted, 7002 follows it; a majority names 7001.
    world.kill(7000);
    world.set_role(7001, None);
    world.set_role(7002, Some(7001));
    for sentinel in world.sentinels.values_mut() {
        sentinel.master = Some(7001);
        sentinel.replicas = vec![(7002, "slave", "ok")];
    }
    world.publish(26000, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7001");
    world.run(Duration::from_millis(1500));
    assert_eq!([world.master_port(0), world.master_port(1), world.master_port(2)], [Some(7001); 3]);
    for client in clients {
        world.send(client, SET);
        world.send(client, GET);
    }
    assert_eq!(world.take("SET"), [7001, 7001]);
    assert_eq!(world.take("GET"), [7002, 7002]);
    assert!(world.take("REPLICAOF").is_empty());
    for proxy in &world.proxies {
        assert!(!proxy.events.iter().any(|e| matches!(e, Event::ReplicaOfSent { .. })));
    }
}
