//! Cluster mode's configuration (`cluster`): the nodes to learn the slot map from, and how often to read it again.

use crate::address::ServerAddress;
use crate::config_fields::{address_list, error, get_u64, ConfigError};
use serde_json::Value;
use std::time::Duration;

/// Cluster mode (`cluster`): a Redis Cluster behind the proxy. The cluster decides failovers; the proxy routes
/// each request to the node that serves its keys' slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Nodes to ask for the slot map at start (`cluster.seeds`); the rest of the cluster is learnt from them.
    pub seeds: Vec<ServerAddress>,
    /// How often the slot map is read again when nothing prompts it (`cluster.refresh_period`, ms, default 5000).
    /// A redirection, a lost connection or `CLUSTERDOWN` prompts a refresh at once.
    pub refresh_period: Duration,
}

/// The fields of the `cluster` object.
const CLUSTER_FIELDS: &[&str] = &["seeds", "refresh_period"];

/// The `cluster` object, if there is one: `seeds` (a non-empty address list) and `refresh_period`.
pub(crate) fn parse_cluster(value: Option<&Value>) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let Value::Object(fields) = value else {
        return Err(error(format!("`cluster`: expected {{\"seeds\": [...]}}, got {value}")));
    };
    if let Some(key) = fields.keys().find(|k| !CLUSTER_FIELDS.contains(&k.as_str())) {
        return Err(error(format!("`cluster`: unknown field `{key}` (known: {})", CLUSTER_FIELDS.join(", "))));
    }
    let seeds = address_list(fields.get("seeds"), "cluster.seeds", &[])?.into_iter().map(|(a, _)| a).collect();
    let refresh_period = get_u64(fields, "refresh_period", 5000, 100)
        .map_err(|e| error(e.0.replace("`refresh_period`", "`cluster.refresh_period`")))?;
    Ok(Some(ClusterConfig { seeds, refresh_period: Duration::from_millis(refresh_period) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ClusterConfig>, ConfigError> {
        let value: Value = serde_json::from_str(text).expect("valid JSON");
        parse_cluster(Some(&value))
    }

    #[test]
    fn seeds_and_default_period() {
        let cluster = parse(r#"{"seeds": [{"host": "127.0.0.1", "port": 7000}, {"port": 7001}]}"#)
            .expect("valid")
            .expect("present");
        assert_eq!(cluster.seeds.len(), 2);
        assert_eq!(cluster.seeds[1], ServerAddress { host: "127.0.0.1".into(), port: 7001 });
        assert_eq!(cluster.refresh_period, Duration::from_millis(5000));
    }

    #[test]
    fn errors_name_the_field() {
        let message = |text: &str| parse(text).expect_err("invalid").0;
        assert!(message(r#"{"seeds": []}"#).contains("`cluster.seeds`: the list is empty"));
        assert!(message(r#"{}"#).contains("missing field `cluster.seeds`"));
        assert!(message(r#"{"seeds": [{"port": 1}], "refresh_period": 5}"#).contains("`cluster.refresh_period`"));
        assert!(message(r#"{"seeds": [{"port": 1}], "epoch": 5}"#).contains("unknown field `epoch`"));
        assert!(message(r#"[1]"#).contains("`cluster`: expected"));
    }
}
