//! Log lines on standard error: a UTC timestamp, the level, the message (as text, or as one JSON object per line
//! for log shippers: `log_format`); filtered by `log_level`, else `RUST_LOG`.

use crate::cli::log_level;
use redis_proxy_engine::{Config, Level, LogFormat, ServerAddress};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes log lines at or above a level to standard error. Cheap to clone into every task that logs; the clones
/// share one level, so a reload that changes it reaches them all.
#[derive(Clone, Debug)]
pub struct Logger {
    level: Arc<AtomicU8>,
    format: LogFormat,
}

impl Logger {
    /// A logger of `level` and everything more severe.
    pub fn new(level: Level) -> Logger {
        Logger { level: Arc::new(AtomicU8::new(level as u8)), format: LogFormat::Text }
    }

    /// The same logger writing `format`.
    pub fn with_format(self, format: LogFormat) -> Logger {
        Logger { format, ..self }
    }

    /// A logger writing `format` at `configured` (the config's `log_level`), else at what `RUST_LOG` names
    /// (`info` when unset or unknown).
    pub fn from_config(format: LogFormat, configured: Option<Level>) -> Logger {
        Logger::new(level_or_env(configured)).with_format(format)
    }

    /// The level lines are filtered at.
    pub fn level(&self) -> Level {
        match self.level.load(Ordering::Relaxed) {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }

    /// Filters at `configured` from now on (`None`: what `RUST_LOG` names), in this logger and all its clones.
    pub fn set_level(&self, configured: Option<Level>) {
        self.level.store(level_or_env(configured) as u8, Ordering::Relaxed);
    }

    /// Whether a message of `level` would be written (to skip formatting one that would not).
    pub fn enabled(&self, level: Level) -> bool {
        level as u8 <= self.level.load(Ordering::Relaxed)
    }

    /// Writes `message` with the current time, if `level` passes the filter.
    pub fn log(&self, level: Level, message: &dyn fmt::Display) {
        if self.enabled(level) {
            let line = match self.format {
                LogFormat::Text => log_line(SystemTime::now(), level, message),
                LogFormat::Json => json_line(SystemTime::now(), level, message),
            };
            eprintln!("{line}");
        }
    }

    /// Logs where the proxy accepts clients and which servers stand behind it (or, in Sentinel mode, which
    /// sentinels name them): the first line of every run.
    pub fn listening(&self, address: SocketAddr, config: &Config) {
        let list =
            |addresses: &[ServerAddress]| addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let behind = match &config.sentinel {
            Some(sentinel) => {
                format!("master {} named by sentinels {}", sentinel.master_name, list(&sentinel.sentinels))
            }
            None => format!("servers {}", list(&config.servers)),
        };
        self.log(Level::Info, &format!("listening on {address}, {behind}"));
    }
}

/// `configured`, else the level `RUST_LOG` names.
fn level_or_env(configured: Option<Level>) -> Level {
    configured.unwrap_or_else(|| log_level(std::env::var("RUST_LOG").ok().as_deref()))
}

/// Formats one log line: `2026-11-24T21:30:00.123Z INFO message` (UTC), for a wall-clock time the runtime read.
pub fn log_line(at: SystemTime, level: Level, message: &dyn fmt::Display) -> String {
    format!("{} {level} {message}", timestamp(at))
}

/// Formats one JSON log line: `{"ts":"2026-11-24T21:30:00.123Z","level":"INFO","msg":"message"}`.
pub fn json_line(at: SystemTime, level: Level, message: &dyn fmt::Display) -> String {
    serde_json::json!({"ts": timestamp(at), "level": level.to_string(), "msg": message.to_string()}).to_string()
}

/// `2026-11-24T21:30:00.123Z` (UTC).
pub(crate) fn timestamp(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_555_800_123);
        assert_eq!(log_line(at, Level::Info, &"hi"), "2026-11-24T21:30:00.123Z INFO hi");
        assert_eq!(
            json_line(at, Level::Warn, &"a \"quoted\" word"),
            r#"{"level":"WARN","msg":"a \"quoted\" word","ts":"2026-11-24T21:30:00.123Z"}"#
        );
    }

    #[test]
    fn filters_by_level() {
        let logger = Logger::new(Level::Warn);
        assert!(logger.enabled(Level::Error) && logger.enabled(Level::Warn));
        assert!(!logger.enabled(Level::Info) && !logger.enabled(Level::Debug));
    }

    #[test]
    fn a_new_level_reaches_every_clone() {
        let logger = Logger::new(Level::Info);
        let clone = logger.clone();
        logger.set_level(Some(Level::Debug));
        assert!(clone.enabled(Level::Debug));
        assert_eq!(clone.level(), Level::Debug);
        clone.set_level(Some(Level::Error));
        assert!(!logger.enabled(Level::Warn));
    }
}
