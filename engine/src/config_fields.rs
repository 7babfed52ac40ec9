//! Reading typed fields out of the JSON configuration, and the error that names the field at fault: shared by
//! `config`, `tls_config` and `cluster_config`.

use crate::address::{valid_host, ServerAddress};
use serde_json::{Map, Value};
use std::fmt;

/// A configuration that cannot be used; the message names the offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn error(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

pub(crate) fn get_u64(map: &Map<String, Value>, field: &str, default: u64, min: u64) -> Result<u64, ConfigError> {
    match map.get(field) {
        None => Ok(default),
        Some(value) => match value.as_u64() {
            Some(n) if n >= min => Ok(n),
            _ => Err(error(format!("`{field}`: expected a whole number >= {min}, got {value}"))),
        },
    }
}

pub(crate) fn get_bool(map: &Map<String, Value>, field: &str, default: bool) -> Result<bool, ConfigError> {
    match map.get(field) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(error(format!("`{field}`: expected true or false, got {other}"))),
    }
}

pub(crate) fn port(value: &Value, field: &str) -> Result<u16, ConfigError> {
    value
        .as_u64()
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .ok_or_else(|| error(format!("`{field}`: expected a TCP port (1-65535), got {value}")))
}

/// An address of a list, with the fields of its entry.
pub(crate) type AddressEntry<'a> = (ServerAddress, &'a Map<String, Value>);

/// A non-empty list of distinct `{"host", "port"}` objects in `field`, each with the other fields `extra` allows
/// (returned beside its address, for the caller to read). A missing host is `127.0.0.1`.
pub(crate) fn address_list<'a>(
    value: Option<&'a Value>,
    field: &str,
    extra: &[&str],
) -> Result<Vec<AddressEntry<'a>>, ConfigError> {
    let Some(value) = value else {
        return Err(error(format!(
            "missing field `{field}`: list the addresses as [{{\"host\": ..., \"port\": ...}}]"
        )));
    };
    let Value::Array(list) = value else {
        return Err(error(format!("`{field}`: expected a list of {{\"host\", \"port\"}} objects, got {value}")));
    };
    if list.is_empty() {
        return Err(error(format!("`{field}`: the list is empty; name at least one address")));
    }
    let mut addresses: Vec<AddressEntry<'a>> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(fields) = entry else {
            return Err(error(format!("`{field}[{i}]`: expected {{\"host\", \"port\"}}, got {entry}")));
        };
        if let Some(key) =
            fields.keys().find(|k| !["host", "port"].contains(&k.as_str()) && !extra.contains(&k.as_str()))
        {
            return Err(error(format!("`{field}[{i}]`: unknown field `{key}`")));
        }
        let host = match fields.get("host") {
            Some(Value::String(h)) if valid_host(h) => h.clone(),
            None => "127.0.0.1".to_string(),
            Some(other) => return Err(error(format!("`{field}[{i}].host`: expected a host name, got {other}"))),
        };
        let Some(port_value) = fields.get("port") else {
            return Err(error(format!("`{field}[{i}].port`: missing")));
        };
        let address = ServerAddress { host, port: port(port_value, &format!("{field}[{i}].port"))? };
        if addresses.iter().any(|(a, _)| *a == address) {
            return Err(error(format!("`{field}[{i}]`: {address} is listed twice")));
        }
        addresses.push((address, fields));
    }
    Ok(addresses)
}
