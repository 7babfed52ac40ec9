//! Reading typed fields out of the JSON configuration, and the error that names the field at fault: shared by
//! `config` and `tls_config`.

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
