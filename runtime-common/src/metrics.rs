//! `/metrics`: the [`StatusSnapshot`] in the Prometheus text format (OpenMetrics), encoded by
//! `prometheus-client` from a registry built for each scrape (the engine's counters are the source of truth; the
//! registry only names and encodes them).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use redis_proxy_engine::{
    Class, ClusterStatus, Health, LatencyHistogram, Role, StatusSnapshot, Target, LATENCY_BUCKETS,
};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The engine's latency histogram as a `prometheus-client` metric (its buckets are the engine's, not re-binned).
#[derive(Debug)]
struct Latency(LatencyHistogram);

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
            .map(|i| (LatencyHistogram::upper_bound(i).map_or(f64::MAX, |b| b.as_secs_f64()), self.0.counts[i]))
            .collect();
        let sum = self.0.sum_micros as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstCounter::new(value));
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    registry.register(name, help, ConstGauge::new(value));
}

/// A family of gauges (`Gauge` is what `Family` can hold; it is set once per scrape).
fn gauges(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, values: Vec<(Labels, i64)>) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

/// A family of counters set from the engine's totals.
fn counters(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, values: Vec<(Labels, u64)>) {
    let family = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family),
        None => registry.register(name, help, family),
    }
}

/// Every metric of `snapshot`, named `redis_proxy_*` (`docs/operating.md` lists them).
pub fn render(snapshot: &StatusSnapshot) -> String {
    let mut registry = Registry::with_prefix("redis_proxy");
    let c = &snapshot.counters;
    gauge(&mut registry, "clients_connected", "Client connections open", snapshot.clients as i64);
    counter(&mut registry, "clients_accepted", "Client connections accepted", c.clients_accepted);
    let requests = Target::ALL
        .iter()
        .flat_map(|t| Class::ALL.iter().map(move |k| (*t, *k)))
        .map(|(t, k)| {
            (
                vec![("target", t.name().to_string()), ("class", k.name().to_string())],
                c.requests[t as usize][k as usize],
            )
        })
        .collect();
    counters(
        &mut registry,
        "requests",
        "Requests answered, by where (master, replica, proxy) and command class",
        None,
        requests,
    );
    registry.register_with_unit(
        "request_duration",
        "Latency of forwarded requests as the proxy sees it (one request in 8 is sampled)",
        Unit::Seconds,
        Latency(c.latency.clone()),
    );
    let errors = [
        ("protocol", c.errors.protocol),
        ("backend_lost", c.errors.backend_lost),
        ("hold_expired", c.errors.hold_expired),
        ("client_rejected", c.errors.client_rejected),
        ("output_limit", c.errors.output_limit),
    ];
    let errors = errors.iter().map(|(kind, n)| (vec![("kind", kind.to_string())], *n)).collect();
    counters(&mut registry, "errors", "Errors given to clients, by kind", None, errors);
    let mut connections = Vec::new();
    let mut up = Vec::new();
    let mut role = Vec::new();
    let mut health = Vec::new();
    let mut offset = Vec::new();
    let mut lag_bytes = Vec::new();
    let mut lag_seconds = Vec::new();
    for server in &snapshot.servers {
        let name = server.address.to_string();
        let label = |key: &'static str, value: &str| vec![("server", name.clone()), (key, value.to_string())];
        let conns = &server.connections;
        for (kind, n) in [("shared", conns.shared), ("private", conns.private), ("probe", conns.probe)] {
            connections.push((label("kind", kind), n as i64));
        }
        up.push((vec![("server", name.clone())], i64::from(server.health <= Health::Busy)));
        for (r, r_name) in [(Role::Master, "master"), (Role::Replica, "replica")] {
            role.push((label("role", r_name), i64::from(server.role == Some(r))));
        }
        role.push((label("role", "routed_master"), i64::from(server.routed_master)));
        for state in Health::ALL {
            health.push((label("state", state.name()), i64::from(server.health == state)));
        }
        if let Some(o) = server.repl_offset {
            offset.push((vec![("server", name.clone())], o));
        }
        if let Some(l) = server.lag_bytes {
            lag_bytes.push((vec![("server", name.clone())], l));
        }
        if let Some(l) = server.lag_seconds {
            lag_seconds.push((vec![("server", name.clone())], l));
        }
    }
    gauges(&mut registry, "backend_connections", "Connections to each server, by kind", None, connections);
    gauges(&mut registry, "server_up", "1 while requests may be routed to the server", None, up);
    gauges(&mut registry, "server_role", "1 for the server's reported role (and routed_master)", None, role);
    gauges(&mut registry, "server_health", "1 for the server's health state", None, health);
    gauges(&mut registry, "server_repl_offset", "Replication offset from INFO", Some(Unit::Bytes), offset);
    gauges(&mut registry, "replica_lag", "Bytes a replica is behind the routed master", Some(Unit::Bytes), lag_bytes);
    gauges(
        &mut registry,
        "replica_last_io",
        "Seconds since a replica last heard from its master",
        Some(Unit::Seconds),
        lag_seconds,
    );
    gauge(&mut registry, "master_routable", "1 while a master is routable", i64::from(snapshot.healthy()));
    let failovers = snapshot.failovers_by_reason.iter().map(|(r, n)| (vec![("reason", r.clone())], *n)).collect();
    counters(&mut registry, "failovers", "Failovers (the master lost or switched), by reason", None, failovers);
    let last = snapshot.last_failover_duration.map_or(0.0, |d| d.as_secs_f64());
    registry.register_with_unit(
        "last_failover_duration",
        "How long the last failover left writes without a master",
        Unit::Seconds,
        ConstGauge::new(last),
    );
    gauge(&mut registry, "held_requests", "Requests held waiting for a master", snapshot.held_requests as i64);
    registry.register_with_unit(
        "held",
        "Memory taken by held requests",
        Unit::Bytes,
        ConstGauge::new(snapshot.held_bytes as i64),
    );
    registry.register_with_unit(
        "client_received",
        "Bytes read from clients",
        Unit::Bytes,
        ConstCounter::new(c.bytes_in),
    );
    registry.register_with_unit("client_sent", "Bytes sent to clients", Unit::Bytes, ConstCounter::new(c.bytes_out));
    counter(&mut registry, "servers_down", "Times a server was counted down", c.servers_down);
    if let Some(cluster) = &snapshot.cluster {
        cluster_metrics(&mut registry, cluster);
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Cluster mode's metrics: the map's shards and age, and what following it took.
fn cluster_metrics(registry: &mut Registry, cluster: &ClusterStatus) {
    let primary = |s: &redis_proxy_engine::ShardStatus| vec![("primary", s.primary.to_string())];
    let slots = cluster.shards.iter().map(|s| (primary(s), s.slots as i64)).collect();
    gauges(registry, "cluster_shard_slots", "Slots each shard serves, by its primary", None, slots);
    let usable = cluster.shards.iter().map(|s| (primary(s), i64::from(s.usable))).collect();
    gauges(registry, "cluster_shard_usable", "1 while requests can go to the shard's primary", None, usable);
    let epochs = cluster.shards.iter().map(|s| (primary(s), s.epoch as i64)).collect();
    gauges(registry, "cluster_shard_epoch", "The config epoch of each shard's primary", None, epochs);
    gauge(registry, "cluster_served_slots", "Slots some shard serves", cluster.served_slots as i64);
    registry.register_with_unit(
        "cluster_map_age",
        "Time since the slot map held was read",
        Unit::Seconds,
        ConstGauge::new(cluster.map_age.map_or(-1.0, |d| d.as_secs_f64())),
    );
    gauge(registry, "cluster_in_flight", "Requests in the cluster awaiting a reply", cluster.in_flight as i64);
    let n = &cluster.counts;
    let redirections = vec![(vec![("kind", "moved".to_string())], n.moved), (vec![("kind", "ask".to_string())], n.ask)];
    counters(registry, "cluster_redirections", "MOVED and ASK replies followed", None, redirections);
    counter(registry, "cluster_retries", "Requests sent again (TRYAGAIN, CLUSTERDOWN, no connection)", n.retries);
    counter(registry, "cluster_refreshes", "Slot maps read from the nodes", n.refreshes);
    counter(registry, "cluster_maps_refused", "Slot maps refused (older, or from a minority)", n.maps_refused);
    counter(registry, "cluster_fanouts", "Requests split by slot or sent to every primary", n.fanouts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_proxy_engine::{Config, Engine};
    use std::time::Instant;

    #[test]
    fn renders_prometheus_names() {
        let config = Config::from_json(r#"{"servers": [{"host": "127.0.0.1", "port": 1}]}"#).expect("valid config");
        let now = Instant::now();
        let text = render(&Engine::new(config, now).status(now));
        for name in [
            "redis_proxy_clients_connected 0",
            "redis_proxy_clients_accepted_total 0",
            "redis_proxy_requests_total{target=\"master\",class=\"read\"} 0",
            "redis_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 0",
            "redis_proxy_errors_total{kind=\"protocol\"} 0",
            "redis_proxy_server_health{server=\"127.0.0.1:1\",state=\"up\"} 1",
            "redis_proxy_master_routable 0",
            "redis_proxy_client_received_bytes_total 0",
            "redis_proxy_held_bytes 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("cluster"), "no cluster metrics outside cluster mode");
    }

    #[test]
    fn renders_cluster_metrics_in_cluster_mode() {
        let config = Config::from_json(r#"{"cluster": {"seeds": [{"port": 1}]}}"#).expect("valid config");
        let now = Instant::now();
        let text = render(&Engine::new(config, now).status(now));
        for name in [
            "redis_proxy_cluster_served_slots 0",
            "redis_proxy_cluster_map_age_seconds -1",
            "redis_proxy_cluster_redirections_total{kind=\"moved\"} 0",
            "redis_proxy_cluster_refreshes_total 0",
            "redis_proxy_master_routable 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
