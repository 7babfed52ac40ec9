//! The command line shared by every runtime binary, and the `RUST_LOG`-style level filter.

use redis_proxy_engine::{Config, ConfigError, Level, Secret, SecretLocation};

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliCommand {
    /// Run the proxy with the config file at this path.
    Run(String),
    /// Validate the config file at this path and exit.
    Check(String),
    /// Connect to the servers of the config file at this path, say what each one is, and exit (0: a master is
    /// usable).
    Probe(String),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// What a runtime binary does after reading its command line and configuration.
#[derive(Debug)]
pub enum Startup {
    /// Run the proxy with this configuration (its `warnings` are for the log), read from the file at this path
    /// (re-read on reload).
    Run(Box<Config>, String),
    /// `--probe`: connect to the servers of this valid configuration, read from the file at this path (see
    /// [`crate::probe`]).
    Probe(Box<Config>, String),
    /// Print these and exit with `code` without running (help, version, `--check`, or an error).
    Exit {
        /// The process exit code: 0, or 2 for a bad command line or configuration.
        code: u8,
        /// Text for standard output.
        stdout: String,
        /// Text for standard error.
        stderr: String,
    },
}

/// Decides what `program` does for `args` (after the program name), reading the config file with `read_file`
/// (the caller does the I/O). Every runtime binary shares this command line.
pub fn startup<I, F>(program: &str, args: I, read_file: F) -> Startup
where
    I: IntoIterator<Item = String>,
    F: FnOnce(&str) -> std::io::Result<String>,
{
    let exit = |code: u8, stdout: String, stderr: String| Startup::Exit { code, stdout, stderr };
    let (path, check_only, probe) = match parse_args(args) {
        Err(message) => return exit(2, String::new(), format!("{program}: {message}\n\n{}\n", usage(program))),
        Ok(CliCommand::Help) => return exit(0, format!("{}\n", usage(program)), String::new()),
        Ok(CliCommand::Version) => {
            return exit(0, format!("{program} {}\n", env!("CARGO_PKG_VERSION")), String::new());
        }
        Ok(CliCommand::Check(path)) => (path, true, false),
        Ok(CliCommand::Probe(path)) => (path, false, true),
        Ok(CliCommand::Run(path)) => (path, false, false),
    };
    let config = match read_file(&path) {
        Err(error) => return exit(2, String::new(), format!("{program}: cannot read {path}: {error}\n")),
        Ok(text) => match load_config(&text) {
            Ok(config) => config,
            Err(error) => return exit(2, String::new(), format!("{program}: {path}: {error}\n")),
        },
    };
    // The TLS files are read here too, so `--check` catches a missing or unusable one and names its field.
    if let Err(error) = crate::tls::TlsSetup::load(&config) {
        return exit(2, String::new(), format!("{program}: {path}: {error}\n"));
    }
    if probe {
        return Startup::Probe(Box::new(config), path);
    }
    if !check_only {
        return Startup::Run(Box::new(config), path);
    }
    let warnings: String = config.warnings.iter().map(|w| format!("{program}: {path}: warning: {w}\n")).collect();
    let valid = format!("{path}: configuration is valid ({} servers)\n", config.servers.len());
    exit(0, valid, warnings)
}

/// Parses a configuration and reads the secrets it points at (`password_file`, `password_env`), so that the
/// engine gets them without doing I/O and `--check` finds a missing file.
pub fn load_config(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::from_json(text)?;
    config.resolve_secrets(read_secret)?;
    Ok(config)
}

/// Reads a secret: a file's contents without one trailing newline (what `echo pw > file` leaves), or an
/// environment variable's value. Errors name the place, never the contents.
pub fn read_secret(location: SecretLocation<'_>) -> Result<Secret, String> {
    let mut bytes = match location {
        SecretLocation::File(path) => {
            std::fs::read(path).map_err(|error| format!("cannot read password file {path}: {error}"))?
        }
        SecretLocation::Env(name) => std::env::var_os(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?
            .into_encoded_bytes(),
    };
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(Secret::new(bytes))
}

/// The usage text for a binary called `program`.
pub fn usage(program: &str) -> String {
    format!(
        "Usage: {program} [--check | --probe] CONFIG.json\n       {program} --help | --version\n\n\
         Runs a Redis failover proxy for the servers in CONFIG.json (see docs/configuration.md).\n\
         --check validates CONFIG.json and the TLS files it names, offline, and exits (0: valid, 2: invalid).\n\
         --probe also connects to every server (or sentinel) with the configured TLS and credentials, prints one\n\
         line per server (reachable, TLS, auth, role, replication, version) and exits 0 only when a master is\n\
         usable (1: none is, 2: invalid configuration).\n\
         Logs go to stderr; RUST_LOG=error|warn|info|debug sets the level (default info)."
    )
}

/// Parses the arguments after the program name.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<CliCommand, String> {
    let args: Vec<String> = args.into_iter().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--help"] | ["-h"] => Ok(CliCommand::Help),
        ["--version"] | ["-V"] => Ok(CliCommand::Version),
        ["--check", path] => Ok(CliCommand::Check(path.to_string())),
        ["--probe", path] => Ok(CliCommand::Probe(path.to_string())),
        [path] if !path.starts_with('-') => Ok(CliCommand::Run(path.to_string())),
        [] => Err("missing CONFIG.json".to_string()),
        other => Err(format!("unexpected arguments: {}", other.join(" "))),
    }
}

/// The most detailed level to log, from a `RUST_LOG`-style value (`error`, `warn`, `info`, `debug`, `trace`;
/// a `target=level` list takes its last level). Unset or unknown means `info`.
pub fn log_level(value: Option<&str>) -> Level {
    let Some(value) = value else { return Level::Info };
    let last = value.split(',').next_back().unwrap_or("");
    let level = last.rsplit('=').next().unwrap_or("");
    match level.trim().to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "warn" | "warning" => Level::Warn,
        "debug" | "trace" => Level::Debug,
        _ => Level::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_lines() {
        let parse = |args: &[&str]| parse_args(args.iter().map(|s| s.to_string()));
        assert_eq!(parse(&["c.json"]), Ok(CliCommand::Run("c.json".into())));
        assert_eq!(parse(&["--check", "c.json"]), Ok(CliCommand::Check("c.json".into())));
        assert_eq!(parse(&["--probe", "c.json"]), Ok(CliCommand::Probe("c.json".into())));
        assert_eq!(parse(&["--version"]), Ok(CliCommand::Version));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn startup_runs_checks_and_refuses() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let good = |_: &str| Ok(r#"{"servers": [{"port": 6379}], "debug": true}"#.to_string());
        assert!(matches!(startup("p", args(&["c.json"]), good), Startup::Run(..)));
        assert!(matches!(startup("p", args(&["--probe", "c.json"]), good), Startup::Probe(..)));
        let Startup::Exit { code: 0, stdout, stderr } = startup("p", args(&["--check", "c.json"]), good) else {
            panic!("--check exits 0 on a valid config");
        };
        assert!(stdout.contains("valid") && stderr.contains("`debug`"));
        let bad = |_: &str| Ok(r#"{"servers": []}"#.to_string());
        assert!(matches!(startup("p", args(&["c.json"]), bad), Startup::Exit { code: 2, .. }));
        let missing = |_: &str| Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(startup("p", args(&["c.json"]), missing), Startup::Exit { code: 2, .. }));
        assert!(matches!(startup("p", args(&[]), good), Startup::Exit { code: 2, .. }));
    }

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        let path = std::env::temp_dir().join(format!("redis-proxy-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let file = path.to_str().unwrap();
        let read = read_secret(SecretLocation::File(file)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.expose(), b"from-file");
        let missing = read_secret(SecretLocation::File(file)).unwrap_err();
        assert!(missing.contains(file), "{missing}");
        assert!(read_secret(SecretLocation::Env("REDIS_PROXY_TEST_SURELY_UNSET")).is_err());
        let bad = load_config(r#"{"servers": [{"port": 1}], "server_auth": {"password_file": "/nonexistent/pw"}}"#);
        assert!(bad.unwrap_err().0.contains("`server_auth`: cannot read password file /nonexistent/pw"));
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_level(None), Level::Info);
        assert_eq!(log_level(Some("debug")), Level::Debug);
        assert_eq!(log_level(Some("redis_proxy=warn")), Level::Warn);
    }
}
