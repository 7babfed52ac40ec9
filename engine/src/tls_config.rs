//! The TLS settings of the configuration (`tls` for clients, `server_tls` for the Redis servers): file paths and
//! switches only, checked for shape here. The engine makes no decision from them; the runtimes load the files
//! and speak TLS (see `redis-proxy-runtime-common`'s `tls` module).

use crate::address::valid_host;
use crate::config_fields::{error, port, ConfigError};
use serde_json::{Map, Value};

/// TLS to clients (`tls`): a second listener, beside the plain one, whose clients speak TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// Port of the TLS listener on `bind_address` (`tls.port`, required).
    pub port: u16,
    /// PEM file with the proxy's certificate chain, leaf first (`tls.cert_file`, required).
    pub cert_file: String,
    /// PEM file with the private key of that certificate (`tls.key_file`, required).
    pub key_file: String,
    /// PEM file with the CAs that sign client certificates (`tls.client_ca_file`); when set, a client must present
    /// a certificate one of them signed. Default: no client certificate asked for.
    pub client_ca_file: Option<String>,
}

/// TLS to the Redis servers (`server_tls`): every connection the proxy opens to a server speaks TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM file with the CAs that sign the servers' certificates (`server_tls.ca_file`; default: the system's
    /// bundle, [`SYSTEM_CA_FILE`]).
    pub ca_file: Option<String>,
    /// The name checked against each server's certificate and sent as SNI (`server_tls.server_name`; default:
    /// the server's `host`, an IP address or a DNS name).
    pub server_name: Option<String>,
    /// PEM file with a client certificate chain to present to the servers (`server_tls.cert_file`; needs
    /// `key_file`). Default: none.
    pub cert_file: Option<String>,
    /// PEM file with the private key of `cert_file` (`server_tls.key_file`).
    pub key_file: Option<String>,
    /// Accept any server certificate (`server_tls.insecure_skip_verify`, default false): for self-signed test
    /// setups only, since anyone on the path can then read and change the traffic.
    pub insecure_skip_verify: bool,
}

/// The CA bundle `server_tls` trusts when `ca_file` is not set (Debian's `ca-certificates`).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The object `field` holds, with no key outside `known`.
fn object<'a>(value: &'a Value, field: &str, known: &[&str]) -> Result<&'a Map<String, Value>, ConfigError> {
    let Value::Object(map) = value else {
        return Err(error(format!("`{field}`: expected an object {{{}}}, got {value}", known.join(", "))));
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(error(format!("`{field}`: unknown field `{key}` (known fields: {})", known.join(", "))));
    }
    Ok(map)
}

/// The non-empty string at `map[key]`, if present.
fn path(map: &Map<String, Value>, field: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(error(format!("`{field}.{key}`: expected a file path, got {other}"))),
    }
}

/// Parses `tls` (None when absent).
pub(crate) fn parse_client_tls(value: Option<&Value>) -> Result<Option<ClientTls>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let map = object(value, "tls", &["port", "cert_file", "key_file", "client_ca_file"])?;
    let required = |key: &str| {
        path(map, "tls", key)?.ok_or_else(|| error(format!("`tls.{key}`: missing (a PEM file is required)")))
    };
    let port = match map.get("port") {
        None => return Err(error("`tls.port`: missing (the port of the TLS listener)".to_string())),
        Some(value) => port(value, "tls.port")?,
    };
    Ok(Some(ClientTls {
        port,
        cert_file: required("cert_file")?,
        key_file: required("key_file")?,
        client_ca_file: path(map, "tls", "client_ca_file")?,
    }))
}

/// Parses `server_tls` (None when absent).
pub(crate) fn parse_server_tls(value: Option<&Value>) -> Result<Option<ServerTls>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let known = ["ca_file", "server_name", "cert_file", "key_file", "insecure_skip_verify"];
    let map = object(value, "server_tls", &known)?;
    let server_name = match map.get("server_name") {
        None => None,
        Some(Value::String(s)) if valid_host(s) => Some(s.clone()),
        Some(other) => {
            return Err(error(format!("`server_tls.server_name`: expected a host name or IP address, got {other}")))
        }
    };
    let insecure_skip_verify = match map.get("insecure_skip_verify") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(error(format!("`server_tls.insecure_skip_verify`: expected true or false, got {other}")))
        }
    };
    let cert_file = path(map, "server_tls", "cert_file")?;
    let key_file = path(map, "server_tls", "key_file")?;
    if cert_file.is_some() != key_file.is_some() {
        return Err(error("`server_tls.cert_file` and `server_tls.key_file`: set both or neither".to_string()));
    }
    Ok(Some(ServerTls {
        ca_file: path(map, "server_tls", "ca_file")?,
        server_name,
        cert_file,
        key_file,
        insecure_skip_verify,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn parses_both_sides_and_names_the_field_in_errors() {
        let config = Config::from_json(
            r#"{"servers": [{"port": 1}],
                "tls": {"port": 6380, "cert_file": "c.pem", "key_file": "k.pem", "client_ca_file": "ca.pem"},
                "server_tls": {"ca_file": "ca.pem", "server_name": "redis.local"}}"#,
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!((tls.port, tls.client_ca_file.as_deref()), (6380, Some("ca.pem")));
        let server = config.server_tls.unwrap();
        assert_eq!(server.server_name.as_deref(), Some("redis.local"));
        assert!(!server.insecure_skip_verify && server.cert_file.is_none());
        let plain = Config::from_json(r#"{"servers": [{"port": 1}]}"#).unwrap();
        assert!(plain.tls.is_none() && plain.server_tls.is_none());
        let err = |text: &str| Config::from_json(text).unwrap_err().0;
        let base = r#"{"servers": [{"port": 1}], "#;
        assert!(err(&format!(r#"{base}"tls": {{"cert_file": "c", "key_file": "k"}}}}"#)).contains("`tls.port`"));
        assert!(err(&format!(r#"{base}"tls": {{"port": 1, "key_file": "k"}}}}"#)).contains("`tls.cert_file`"));
        assert!(err(&format!(r#"{base}"tls": {{"port": 1, "cert_file": "c", "key_file": "k", "ca": 1}}}}"#))
            .contains("unknown field `ca`"));
        assert!(err(&format!(r#"{base}"server_tls": {{"cert_file": "c"}}}}"#)).contains("`server_tls.cert_file`"));
        assert!(err(&format!(r#"{base}"server_tls": {{"insecure_skip_verify": 1}}}}"#))
            .contains("`server_tls.insecure_skip_verify`"));
        assert!(err(&format!(r#"{base}"server_tls": {{"server_name": "a b"}}}}"#)).contains("`server_tls.server_name`"));
        assert!(err(&format!(r#"{base}"server_tls": true}}"#)).contains("`server_tls`"));
    }
}
