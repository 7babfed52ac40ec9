//! The engine's tests that span modules, compiled only for the crate's own tests: each drives whole
//! [`Engine`](crate::Engine)s on a fake clock through the test kit's [`Driver`](crate::testkit::Driver) (the unit
//! tests of a single module stay beside it).
//!
//! | module | what it tests |
//! |---|---|
//! | `cluster_world` | a modelled Redis Cluster: slots, keys, `MOVED`/`ASK`/`TRYAGAIN` as Redis gives them, migrations stage by stage, failovers, minority, lagging and refusing nodes, a network delay, every write logged in execution order |
//! | `cluster_path` | cluster mode: the map read, routing by slot, redirections followed, multi-key commands split |
//! | `cluster_sim` | one proxy in cluster mode on random schedules of client pipelines, slot migrations, failovers, partitions and refused connections: no redirection reaches a client, replies in order and checked against the keyspace, no acknowledged write lost, no write on a node that does not own the slot, no map from a minority or older by epoch |
//! | `request_path` | the request path: reply order, order barrier, hold queue, pass-through, `QUIT`, protocol errors |
//! | `stream_path` | large replies streamed to their client |
//! | `upload_path` | large requests uploaded to the server |
//! | `sim` | the deterministic failover simulation: modelled Redis servers, one or two engines, fault scenarios, invariants |
//! | `sentinel_world` | fake sentinels and fake servers for the Sentinel-mode tests, with per-proxy partitions |
//! | `sentinel` | Sentinel mode: majority rule, stale or lying sentinels, cut-off proxies |
//! | `sentinel_sim` | several proxies in Sentinel mode on random schedules, checked against the Sentinel invariants |
//! | `sentinel_traffic` | one proxy in Sentinel mode with client traffic while the sentinels' answers change the servers: reply order, `SCAN` completeness, reads only where the sentinels allow |

mod cluster_path;
mod cluster_sim;
mod cluster_world;
mod request_path;
mod sentinel;
mod sentinel_sim;
mod sentinel_traffic;
mod sentinel_world;
mod sim;
mod stream_path;
mod upload_path;
